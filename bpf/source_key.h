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
 * family 4; IPv6 addresses as they are, with family 6. port is in host byte order: the
 * destination port, or for ICMP and ICMPv6 the message type. proto is the IP protocol number.
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
 * put in the table per tick of the sketches (the new_source_budget setting), 0 for no limit.
 * protocols: the PROTOCOL_* bits of the protocols recorded. source_lists: 0 when no source
 * list is in force, else EXCLUDE_LIST when the exclude_sources trie has prefixes, INCLUDE_LIST
 * when include_sources is in force, and a generation (from bit 8) changed with every rewrite
 * of the lists. icmp_types: the ICMP types recorded (bit type % 64 of word type / 64), ICMPv6
 * types from word 4. Written by xdp_ip_counter/bpf.py (DataPath._write_filter). */
struct port_filter {
    __u64 all_ports;
    __u64 window_stamps;
    __u64 admit_per_tick;
    __u64 protocols;
    __u64 source_lists;
    __u64 icmp_types[8];
    __u64 bits[1024];
};

/* Bits of port_filter.protocols, in the order of layout.PROTOCOLS. */
#define PROTOCOL_TCP (1 << 0)
#define PROTOCOL_UDP (1 << 1)
#define PROTOCOL_ICMP (1 << 2)   /* in IPv4 only */
#define PROTOCOL_ICMPV6 (1 << 3) /* in IPv6 only */
#define PROTOCOL_SCTP (1 << 4)
#define PROTOCOL_UDPLITE (1 << 5)
#define PROTOCOL_DCCP (1 << 6)

#define EXCLUDE_LIST 1
#define INCLUDE_LIST 2

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
    OUTCOME_EXCLUDED,
    OUTCOME_NOT_INCLUDED,
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

/* Whether filter watches key: its ICMP type for ICMP and ICMPv6 (the key's port), else its
 * port. */
static __always_inline int key_in_filter(const struct port_filter *filter,
                                         const struct source_key *key)
{
    if (!filter)
        return 0;
    if (key->proto == IPPROTO_ICMP || key->proto == IPPROTO_ICMPV6) {
        __u32 word = (key->port >> 6) & 3;
        if (key->proto == IPPROTO_ICMPV6)
            word += 4;
        /* An explicit bound the compiler cannot drop: Linux 6.1's verifier loses the bounds
         * of the arithmetic above (and refuses the program), later ones keep them. */
        asm volatile("" : "+r"(word));
        if (word > 7)
            return 0;
        return (filter->icmp_types[word] >> (key->port & 63)) & 1;
    }
    return port_in_filter(filter, key->port);
}

/* The PROTOCOL_* bit of an upper-layer protocol in an IP family; 0 when not one we record. */
static __always_inline __u64 protocol_bit(int l4proto, int family)
{
    switch (l4proto) {
    case IPPROTO_TCP:
        return PROTOCOL_TCP;
    case IPPROTO_UDP:
        return PROTOCOL_UDP;
    case IPPROTO_ICMP:
        return family == 4 ? PROTOCOL_ICMP : 0;
    case IPPROTO_ICMPV6:
        return family == 6 ? PROTOCOL_ICMPV6 : 0;
    case IPPROTO_SCTP:
        return PROTOCOL_SCTP;
    case IPPROTO_UDPLITE:
        return PROTOCOL_UDPLITE;
    case IPPROTO_DCCP:
        return PROTOCOL_DCCP;
    default:
        return 0;
    }
}

#define SOURCE_KEY_PARSED -1

/* Parse ctx's frame into *key (every field) and *ip_len (the IP length, header included).
 * protocols: the PROTOCOL_* bits of the protocols to record; the header of another is not read.
 * Returns SOURCE_KEY_PARSED, for the caller to filter by key->port and record; otherwise the
 * outcome to count: not IP, another protocol, malformed, a fragment, too deep. */
static __always_inline int parse_source_key(struct xdp_md *ctx, struct source_key *key,
                                            __u32 *ip_len, __u64 protocols)
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

    if (!(protocol_bit(l4proto, key->family) & protocols))
        return OUTCOME_OTHER_PROTOCOL;
    int port;
    if (l4proto == IPPROTO_TCP)
        port = parse_tcp_dport(&c, end);
    else if (l4proto == IPPROTO_UDP || l4proto == IPPROTO_UDPLITE)
        port = parse_udp_dport(&c, end);
    else if (l4proto == IPPROTO_SCTP)
        port = parse_sctp_dport(&c, end);
    else if (l4proto == IPPROTO_DCCP)
        port = parse_dccp_dport(&c, end);
    else
        port = parse_icmp_type(&c, end); /* ICMP in IPv4, ICMPv6 in IPv6 */
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
