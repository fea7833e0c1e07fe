/* From a frame to its source key: the step that xdp_ip_counter.c and the benchmark's first version
 * (bench/programs/first_version.c) share, so that the key, the outcomes and the parse exist once.
 *
 * Nothing here touches a map: bcc rewrites map calls (stats.lookup(), ...) only in the file it
 * compiles, so counting an outcome and reading the port filter stay with each program.
 */
#ifndef XDP_IP_COUNTER_SOURCE_KEY_H
#define XDP_IP_COUNTER_SOURCE_KEY_H

#include "parsing.h"

/* Key of the sources map. IPv4 addresses are stored IPv4-mapped (::ffff:a.b.c.d), with
 * family 4; IPv6 addresses as they are, with family 6. port is in host byte order.
 * Mirrored in xdp_ip_counter/layout.py (a test compares the two). */
struct source_key {
    __u8 addr[16];
    __u32 ifindex;
    __u16 port;
    __u8 proto;
    __u8 family;
} __attribute__((aligned(8))); /* read as three 64-bit words by the cache */

/* The program's configuration. Watched destination ports: bit (port % 64) of bits[port / 64];
 * all_ports != 0 watches all. window_stamps: the window in units of 2^30 ns, rounded up, for
 * the sources table's lazy expiry (xdp_ip_counter.c). admit_per_tick: new sources a CPU may
 * put in the table per tick of the sketches (the new_source_budget setting), 0 for no limit. */
struct port_filter {
    __u64 all_ports;
    __u64 window_stamps;
    __u64 admit_per_tick;
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
    OUTCOME_NOT_ADMITTED,
    OUTCOME_MAX,
};

/* Events counted after the outcomes in the same per-CPU array. Order = layout.EVENTS. */
enum event {
    EVENT_EVICTED = OUTCOME_MAX, /* a live entry given up for a new key */
    EVENT_SKETCH_TICKS,          /* sketch slots cleared for a new tick */
    STATS_MAX,
};

static __always_inline int verdict_outcome(int verdict)
{
    switch (verdict) {
    case PARSE_TOO_DEEP:
        return OUTCOME_TOO_DEEP;
    case PARSE_FRAGMENT:
        return OUTCOME_FRAGMENT;
    default:
        return OUTCOME_MALFORMED;
    }
}

/* Whether filter (the port_filter map's one value, or NULL) watches port. */
static __always_inline int port_in_filter(const struct port_filter *filter, __u16 port)
{
    if (!filter)
        return 0;
    if (filter->all_ports)
        return 1;
    return (filter->bits[port >> 6] >> (port & 63)) & 1;
}

#define SOURCE_KEY_PARSED -1

/* Parse ctx's frame into *key (every field) and *ip_len (the IP length, header included).
 * Returns SOURCE_KEY_PARSED, for the caller to filter by key->port and record; otherwise the
 * outcome to count: not IP, another protocol, malformed, a fragment, too deep. */
static __always_inline int parse_source_key(struct xdp_md *ctx, struct source_key *key,
                                            __u32 *ip_len)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    struct hdr_cursor c = {.pos = data};
    void *l3;

    int eth_type = parse_ethhdr(&c, end);
    if (eth_type < 0)
        return verdict_outcome(eth_type);

    l3 = c.pos;
    int l4proto;
    if (eth_type == net16(ETH_P_IP)) {
        struct iphdr *iph;
        l4proto = parse_iphdr(&c, end, &iph, ip_len);
        if (l4proto < 0)
            return verdict_outcome(l4proto);
        key->family = 4;
        key->addr[10] = 0xff;
        key->addr[11] = 0xff;
        __builtin_memcpy(&key->addr[12], &iph->saddr, 4);
    } else if (eth_type == net16(ETH_P_IPV6)) {
        struct ipv6hdr *ip6h;
        l4proto = parse_ip6hdr(&c, end, &ip6h, ip_len);
        if (l4proto < 0)
            return verdict_outcome(l4proto);
        key->family = 6;
        __builtin_memcpy(key->addr, &ip6h->saddr, 16);
    } else {
        return OUTCOME_NOT_IP;
    }

    int port;
    if (l4proto == IPPROTO_TCP)
        port = parse_tcp_dport(&c, end);
    else if (l4proto == IPPROTO_UDP)
        port = parse_udp_dport(&c, end);
    else
        return OUTCOME_OTHER_PROTOCOL;
    if (port < 0)
        return OUTCOME_MALFORMED;
    /* The L4 header must lie within the length the IP header declares. */
    if (c.pos - l3 > *ip_len)
        return OUTCOME_MALFORMED;

    key->ifindex = ctx->ingress_ifindex;
    key->port = port;
    key->proto = l4proto;
    return SOURCE_KEY_PARSED;
}

#endif /* XDP_IP_COUNTER_SOURCE_KEY_H */
