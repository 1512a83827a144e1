// gobgp-loader puts N IPv4 /32 prefixes (from 100.64.0.0, next hop given) into a gobgpd's global
// RIB through its AddPathStream API, in batches, and exits once gobgpd has acknowledged them.
// Part of routeplane's BGP benchmark (bench/run-bgp): the side-by-side of loading the sender.
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"

	api "github.com/osrg/gobgp/api"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// codec marshals with google.golang.org/protobuf: built GOPATH-style from Debian's packages,
// grpc-go would otherwise pick the old golang/protobuf codec, which cannot decode these messages.
type codec struct{}

func (codec) Marshal(v interface{}) ([]byte, error)      { return proto.Marshal(v.(proto.Message)) }
func (codec) Unmarshal(data []byte, v interface{}) error { return proto.Unmarshal(data, v.(proto.Message)) }
func (codec) Name() string                               { return "proto" }

func main() {
	addr := flag.String("api", "127.0.0.1:50151", "gobgpd gRPC address")
	count := flag.Int("n", 100000, "prefixes")
	nextHop := flag.String("next-hop", "10.4.36.20", "next hop of every path")
	flag.Parse()

	conn, err := grpc.Dial(*addr, grpc.WithInsecure(), grpc.WithDefaultCallOptions(grpc.ForceCodec(codec{})))
	if err != nil {
		fail(err)
	}
	client := api.NewGobgpApiClient(conn)
	stream, err := client.AddPathStream(context.Background())
	if err != nil {
		fail(err)
	}
	origin, _ := anypb.New(&api.OriginAttribute{Origin: 0})
	hop, _ := anypb.New(&api.NextHopAttribute{NextHop: *nextHop})
	family := &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	base := binary.BigEndian.Uint32(net.ParseIP("100.64.0.0").To4())
	batch := make([]*api.Path, 0, 1000)
	for i := 0; i < *count; i++ {
		ip := make(net.IP, 4)
		binary.BigEndian.PutUint32(ip, base+uint32(i))
		nlri, _ := anypb.New(&api.IPAddressPrefix{PrefixLen: 32, Prefix: ip.String()})
		batch = append(batch, &api.Path{Family: family, Nlri: nlri, Pattrs: []*anypb.Any{origin, hop}})
		if len(batch) == cap(batch) || i == *count-1 {
			if err := stream.Send(&api.AddPathStreamRequest{TableType: api.TableType_GLOBAL, Paths: batch}); err != nil {
				fail(err)
			}
			batch = batch[:0]
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		fail(err)
	}
	fmt.Println(*count)
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gobgp-loader:", err)
	os.Exit(1)
}
