/* Benchmark baseline: the first version of bpf/xdp_ip_counter.c (commit 42ad813), which looks
 * every recorded frame up in the LRU hash and stamps it with bpf_ktime_get_coarse_ns(). It shares
 * bpf/parsing.h with the project's program. bench/kernel_cost.py compiles it twice, as two steps:
 *   -DPARSE_ONLY  parse, port filter and outcome counter, but record nothing
 *   (default)     + an LRU-hash lookup and in-place update (an insert for a new key) per frame
 *
 * Compiled by bcc at start-up with these -D settings from the daemon:
 *   MAX_ENTRIES  capacity of the sources LRU hash
 *   LRU_FLAGS    map flags for it (0, or BPF_F_NO_COMMON_LRU)
 */
#include <uapi/linux/bpf.h>
#include "parsing.h"

#ifndef MAX_ENTRIES
#define MAX_ENTRIES 262144
#endif
#ifndef LRU_FLAGS
#define LRU_FLAGS 0
#endif

/* Key of the sources map. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d), with
 * family 4; IPv6 addresses as they are, with family 6. port is in host byte order.
 * Mirrored in xdp_ip_counter/layout.py (a test compares the two). */
struct source_key {
    __u8 addr[16];
    __u32 ifindex;
    __u16 port;
    __u8 proto;
    __u8 family;
};

/* Times are CLOCK_MONOTONIC (coarse) in ns; bytes are IP bytes (header included). */
struct source_value {
    __u64 first_seen;
    __u64 last_seen;
    __u64 packets;
    __u64 bytes;
};

/* Watched destination ports: bit (port % 64) of bits[port / 64]. all_ports != 0 watches all. */
struct port_filter {
    __u64 all_ports;
    __u64 bits[1024];
};

/* One counter per outcome; every frame increments exactly one. Order = layout.OUTCOMES. */
enum outcome {
    OUTCOME_RECORDED = 0,
    OUTCOME_RECORDED_NEW,
    OUTCOME_NOT_IP,
    OUTCOME_OTHER_PROTOCOL,
    OUTCOME_PORT_FILTERED,
    OUTCOME_FRAGMENT,
    OUTCOME_MALFORMED,
    OUTCOME_TOO_DEEP,
    OUTCOME_INSERT_FAILED,
    OUTCOME_MAX,
};

BPF_F_TABLE("lru_hash", struct source_key, struct source_value, sources, MAX_ENTRIES, LRU_FLAGS);
BPF_ARRAY(port_filter, struct port_filter, 1);
BPF_PERCPU_ARRAY(stats, __u64, OUTCOME_MAX);

static __always_inline int count(__u32 outcome)
{
    __u64 *counter = stats.lookup(&outcome);
    if (counter)
        *counter += 1;
    return XDP_PASS;
}

static __always_inline int verdict_outcome(int verdict)
{
    switch (verdict) {
    case PARSE_TOO_DEEP:
        return OUTCOME_TOO_DEEP;
    case PARSE_FRAGMENT:
        return OUTCOME_FRAGMENT;
    case PARSE_OTHER:
        return OUTCOME_OTHER_PROTOCOL;
    default:
        return OUTCOME_MALFORMED;
    }
}

static __always_inline int port_watched(__u16 port)
{
    __u32 zero = 0;
    struct port_filter *filter = port_filter.lookup(&zero);
    if (!filter)
        return 0;
    if (filter->all_ports)
        return 1;
    return (filter->bits[port >> 6] >> (port & 63)) & 1;
}

static __always_inline int record(struct source_key *key, __u32 ip_len)
{
    __u64 now = bpf_ktime_get_coarse_ns();
    struct source_value *value = sources.lookup(key);
    if (!value) {
        struct source_value fresh = {
            .first_seen = now, .last_seen = now, .packets = 1, .bytes = ip_len};
        int err = sources.insert(key, &fresh);
        if (err == 0)
            return count(OUTCOME_RECORDED_NEW);
        /* Another CPU inserted the same key between our lookup and insert. */
        value = sources.lookup(key);
        if (!value)
            return count(OUTCOME_INSERT_FAILED);
    }
    if (value->last_seen != now)
        value->last_seen = now;
    __sync_fetch_and_add(&value->packets, 1);
    __sync_fetch_and_add(&value->bytes, ip_len);
    return count(OUTCOME_RECORDED);
}

int xdp_ip_counter(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct hdr_cursor c = {.pos = data};
    struct source_key key = {};
    __u32 ip_len = 0;
    void *l3;

    int eth_type = parse_ethhdr(&c, end);
    if (eth_type < 0)
        return count(verdict_outcome(eth_type));

    l3 = c.pos;
    int l4proto;
    if (eth_type == net16(ETH_P_IP)) {
        struct iphdr *iph;
        l4proto = parse_iphdr(&c, end, &iph, &ip_len);
        if (l4proto < 0)
            return count(verdict_outcome(l4proto));
        key.family = 4;
        key.addr[10] = 0xff;
        key.addr[11] = 0xff;
        __builtin_memcpy(&key.addr[12], &iph->saddr, 4);
    } else if (eth_type == net16(ETH_P_IPV6)) {
        struct ipv6hdr *ip6h;
        l4proto = parse_ip6hdr(&c, end, &ip6h, &ip_len);
        if (l4proto < 0)
            return count(verdict_outcome(l4proto));
        key.family = 6;
        __builtin_memcpy(key.addr, &ip6h->saddr, 16);
    } else {
        return count(OUTCOME_NOT_IP);
    }

    int port;
    if (l4proto == IPPROTO_TCP)
        port = parse_tcp_dport(&c, end);
    else if (l4proto == IPPROTO_UDP)
        port = parse_udp_dport(&c, end);
    else
        return count(OUTCOME_OTHER_PROTOCOL);
    if (port < 0)
        return count(OUTCOME_MALFORMED);
    /* The L4 header must lie within the length the IP header declares. */
    if (c.pos - l3 > ip_len)
        return count(OUTCOME_MALFORMED);

    if (!port_watched(port))
        return count(OUTCOME_PORT_FILTERED);

    key.ifindex = ctx->ingress_ifindex;
    key.port = port;
    key.proto = l4proto;
#ifdef PARSE_ONLY
    return count(OUTCOME_RECORDED);
#else
    return record(&key, ip_len);
#endif
}
