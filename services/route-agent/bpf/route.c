// routeplane-agent's eBPF datapath: two TC classifiers.
//
// rp_pod, on the ingress of every pod's host-side veth (what the pod sends): a packet whose
// destination lies in another node's pod CIDR (the LPM tries rp_routes_v4/v6, which the agent keeps
// in step with the IPAM feed) is sent to that node with bpf_redirect_neigh — no kernel route
// needed; anything else passes to the stack.
//
// rp_uplink, on the ingress of the node's own interfaces (what other nodes and the ToR send).
//
// Together they make a node one hop, as Cilium's datapath does and the seed's traceroutes show:
// counted once on the way out of a pod and once on the way into the node's pod CIDR (its router IP
// included). The node decrements the TTL (hop limit) there but never answers with ICMP
// time-exceeded: a packet whose TTL runs out on a node is dropped silently (counted in
// rp_hop_drops). Where the kernel forwards after us, it does the decrement itself — and never sees a
// TTL low enough to answer. rp_local_v4/v6 hold this node's pod CIDRs, each with its router IP.
//
// Per-CPU counters: rp_counters [0] forwarded by redirect, [1] passed to the stack; rp_hop_drops [0].
// All maps are pinned by name under the agent's pin directory, so a restarted agent (and its new
// programs) finds the same entries and counts on.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AF_INET 2
#define AF_INET6 10

struct lpm_v4 {
    __u32 prefixlen;
    __u8 addr[4];
};

struct nexthop_v4 {
    __u32 ifindex;
    __u8 addr[4];
};

struct lpm_v6 {
    __u32 prefixlen;
    __u8 addr[16];
};

struct nexthop_v6 {
    __u32 ifindex;
    __u8 addr[16];
};

// (The parameters are not named key and value: those are the map definition's own fields.)
#define LPM(name, key_type, value_type, entries)                                                \
    struct {                                                                                    \
        __uint(type, BPF_MAP_TYPE_LPM_TRIE);                                                    \
        __type(key, struct key_type);                                                           \
        __type(value, struct value_type);                                                       \
        __uint(max_entries, entries);                                                           \
        __uint(map_flags, BPF_F_NO_PREALLOC);                                                   \
        __uint(pinning, LIBBPF_PIN_BY_NAME);                                                    \
    } name SEC(".maps")

// Other nodes' pod CIDRs -> (interface, next hop).
LPM(rp_routes_v4, lpm_v4, nexthop_v4, 1 << 20);
LPM(rp_routes_v6, lpm_v6, nexthop_v6, 1 << 20);
// This node's pod CIDRs -> (0, router IP).
LPM(rp_local_v4, lpm_v4, nexthop_v4, 16);
LPM(rp_local_v6, lpm_v6, nexthop_v6, 16);

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 2);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} rp_counters SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 1);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} rp_hop_drops SEC(".maps");

// Byte arrays compared without memcmp, which BPF has no function for.
static __always_inline int same16(const __u8 *a, const __u8 *b) {
    __u8 diff = 0;
#pragma unroll
    for (int i = 0; i < 16; i++)
        diff |= a[i] ^ b[i];
    return diff == 0;
}

static __always_inline int count(__u32 which, int verdict) {
    __u64 *c = bpf_map_lookup_elem(&rp_counters, &which);
    if (c)
        *c += 1;
    return verdict;
}

// A packet whose TTL would run out here: dropped without an ICMP answer.
static __always_inline int hop_drop(void) {
    __u32 zero = 0;
    __u64 *c = bpf_map_lookup_elem(&rp_hop_drops, &zero);
    if (c)
        *c += 1;
    return TC_ACT_SHOT;
}

#define IP_TTL_OFF (ETH_HLEN + offsetof(struct iphdr, ttl))
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP6_HOP_OFF (ETH_HLEN + offsetof(struct ipv6hdr, hop_limit))

// TTL - 1, with the header checksum updated (RFC 1624: the TTL shares a 16-bit word with the
// protocol). Packet pointers are stale afterwards.
static __always_inline int dec_ttl(struct __sk_buff *skb, __u8 ttl, __u8 protocol) {
    __u8 next = ttl - 1;
    __be16 old_word = bpf_htons(((__u16)ttl << 8) | protocol);
    __be16 new_word = bpf_htons(((__u16)next << 8) | protocol);
    if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_word, new_word, 2) < 0)
        return -1;
    return bpf_skb_store_bytes(skb, IP_TTL_OFF, &next, 1, 0);
}

static __always_inline int dec_hop_limit(struct __sk_buff *skb, __u8 hops) {
    __u8 next = hops - 1;
    return bpf_skb_store_bytes(skb, IP6_HOP_OFF, &next, 1, 0);
}

static __always_inline int pod_v4(struct __sk_buff *skb, void *l3, void *end) {
    struct iphdr *ip = l3;
    if ((void *)(ip + 1) > end)
        return count(1, TC_ACT_OK);
    __u8 ttl = ip->ttl, protocol = ip->protocol;
    struct lpm_v4 key = {.prefixlen = 32};
    __builtin_memcpy(key.addr, &ip->daddr, 4);
    struct nexthop_v4 *local = bpf_map_lookup_elem(&rp_local_v4, &key);
    if (local) {
        // The node's own router IP: the node itself, not a hop.
        if (*(__u32 *)local->addr == *(__u32 *)key.addr)
            return count(1, TC_ACT_OK);
        // Another pod of this node: out of one pod (here) and into the CIDR (the kernel, next).
        if (ttl <= 2)
            return hop_drop();
        if (dec_ttl(skb, ttl, protocol) < 0)
            return TC_ACT_SHOT;
        return count(1, TC_ACT_OK);
    }
    if (ttl <= 1)
        return hop_drop();
    struct nexthop_v4 *nh = bpf_map_lookup_elem(&rp_routes_v4, &key);
    if (!nh)
        return count(1, TC_ACT_OK); // the kernel forwards, and decrements
    struct bpf_redir_neigh neigh = {.nh_family = AF_INET};
    __builtin_memcpy(&neigh.ipv4_nh, nh->addr, 4);
    __u32 ifindex = nh->ifindex;
    if (dec_ttl(skb, ttl, protocol) < 0)
        return TC_ACT_SHOT;
    count(0, 0);
    return bpf_redirect_neigh(ifindex, &neigh, sizeof(neigh), 0);
}

static __always_inline int pod_v6(struct __sk_buff *skb, void *l3, void *end) {
    struct ipv6hdr *ip6 = l3;
    if ((void *)(ip6 + 1) > end)
        return count(1, TC_ACT_OK);
    __u8 hops = ip6->hop_limit;
    struct lpm_v6 key = {.prefixlen = 128};
    __builtin_memcpy(key.addr, &ip6->daddr, 16);
    struct nexthop_v6 *local = bpf_map_lookup_elem(&rp_local_v6, &key);
    if (local) {
        if (same16(local->addr, key.addr))
            return count(1, TC_ACT_OK);
        if (hops <= 2)
            return hop_drop();
        if (dec_hop_limit(skb, hops) < 0)
            return TC_ACT_SHOT;
        return count(1, TC_ACT_OK);
    }
    // Neighbour discovery and other link-local traffic (hop limit 255) passes untouched.
    if (ip6->daddr.in6_u.u6_addr8[0] == 0xfe || ip6->daddr.in6_u.u6_addr8[0] == 0xff)
        return count(1, TC_ACT_OK);
    if (hops <= 1)
        return hop_drop();
    struct nexthop_v6 *nh = bpf_map_lookup_elem(&rp_routes_v6, &key);
    if (!nh)
        return count(1, TC_ACT_OK);
    struct bpf_redir_neigh neigh = {.nh_family = AF_INET6};
    __builtin_memcpy(neigh.ipv6_nh, nh->addr, 16);
    __u32 ifindex = nh->ifindex;
    if (dec_hop_limit(skb, hops) < 0)
        return TC_ACT_SHOT;
    count(0, 0);
    return bpf_redirect_neigh(ifindex, &neigh, sizeof(neigh), 0);
}

SEC("classifier")
int rp_pod(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return count(1, TC_ACT_OK);
    if (eth->h_proto == bpf_htons(ETH_P_IP))
        return pod_v4(skb, eth + 1, end);
    if (eth->h_proto == bpf_htons(ETH_P_IPV6))
        return pod_v6(skb, eth + 1, end);
    return count(1, TC_ACT_OK);
}

// Into this node's pod CIDR from outside: the hop is counted here, dropped where it runs out; the
// kernel decrements as it forwards to the pod (its router IP it delivers without one).
SEC("classifier")
int rp_uplink(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return TC_ACT_OK;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > end)
            return TC_ACT_OK;
        struct lpm_v4 key = {.prefixlen = 32};
        __builtin_memcpy(key.addr, &ip->daddr, 4);
        if (ip->ttl <= 1 && bpf_map_lookup_elem(&rp_local_v4, &key))
            return hop_drop();
        return TC_ACT_OK;
    }
    if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > end)
            return TC_ACT_OK;
        struct lpm_v6 key = {.prefixlen = 128};
        __builtin_memcpy(key.addr, &ip6->daddr, 16);
        if (ip6->hop_limit <= 1 && bpf_map_lookup_elem(&rp_local_v6, &key))
            return hop_drop();
        return TC_ACT_OK;
    }
    return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
