// routeplane-agent's eBPF datapath: a TC classifier on the pod-facing interfaces. A packet whose
// destination lies in another node's pod CIDR (the LPM tries rp_routes_v4 and rp_routes_v6, which
// the agent keeps in step with the IPAM feed) is sent to that node with bpf_redirect_neigh — no kernel route needed;
// anything else passes to the stack. Per-CPU counters: [0] forwarded, [1] passed. Both maps are
// pinned by name under the agent's pin directory, so a restarted agent (and its new program) finds
// the same entries and counts on.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
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

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __type(key, struct lpm_v4);
    __type(value, struct nexthop_v4);
    __uint(max_entries, 1 << 20);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} rp_routes_v4 SEC(".maps");

struct lpm_v6 {
    __u32 prefixlen;
    __u8 addr[16];
};

struct nexthop_v6 {
    __u32 ifindex;
    __u8 addr[16];
};

struct {
    __uint(type, BPF_MAP_TYPE_LPM_TRIE);
    __type(key, struct lpm_v6);
    __type(value, struct nexthop_v6);
    __uint(max_entries, 1 << 20);
    __uint(map_flags, BPF_F_NO_PREALLOC);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} rp_routes_v6 SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __type(key, __u32);
    __type(value, __u64);
    __uint(max_entries, 2);
    __uint(pinning, LIBBPF_PIN_BY_NAME);
} rp_counters SEC(".maps");

static __always_inline int count(__u32 which, int verdict) {
    __u64 *c = bpf_map_lookup_elem(&rp_counters, &which);
    if (c)
        *c += 1;
    return verdict;
}

static __always_inline int forward_v4(void *l3, void *end) {
    struct iphdr *ip = l3;
    if ((void *)(ip + 1) > end)
        return count(1, TC_ACT_OK);
    struct lpm_v4 key = {.prefixlen = 32};
    __builtin_memcpy(key.addr, &ip->daddr, 4);
    struct nexthop_v4 *nh = bpf_map_lookup_elem(&rp_routes_v4, &key);
    if (!nh)
        return count(1, TC_ACT_OK);
    struct bpf_redir_neigh neigh = {.nh_family = AF_INET};
    __builtin_memcpy(&neigh.ipv4_nh, nh->addr, 4);
    count(0, 0);
    return bpf_redirect_neigh(nh->ifindex, &neigh, sizeof(neigh), 0);
}

static __always_inline int forward_v6(void *l3, void *end) {
    struct ipv6hdr *ip6 = l3;
    if ((void *)(ip6 + 1) > end)
        return count(1, TC_ACT_OK);
    struct lpm_v6 key = {.prefixlen = 128};
    __builtin_memcpy(key.addr, &ip6->daddr, 16);
    struct nexthop_v6 *nh = bpf_map_lookup_elem(&rp_routes_v6, &key);
    if (!nh)
        return count(1, TC_ACT_OK);
    struct bpf_redir_neigh neigh = {.nh_family = AF_INET6};
    __builtin_memcpy(neigh.ipv6_nh, nh->addr, 16);
    count(0, 0);
    return bpf_redirect_neigh(nh->ifindex, &neigh, sizeof(neigh), 0);
}

SEC("classifier")
int rp_route(struct __sk_buff *skb) {
    void *data = (void *)(long)skb->data;
    void *end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > end)
        return count(1, TC_ACT_OK);
    if (eth->h_proto == bpf_htons(ETH_P_IP))
        return forward_v4(eth + 1, end);
    if (eth->h_proto == bpf_htons(ETH_P_IPV6))
        return forward_v6(eth + 1, end);
    return count(1, TC_ACT_OK);
}

char LICENSE[] SEC("license") = "GPL";
