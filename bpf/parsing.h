/* Cursor-style header parsers for xdp_ip_counter.c, after xdp-tools' parsing_helpers.h.
 *
 * Every parser checks bounds before it reads, advances the cursor past the header it parsed and
 * returns either the next protocol (>= 0) or a negative PARSE_* verdict. Loops are bounded. A
 * protocol not parsed further (ESP, No Next Header, ...) is returned as its number, for the
 * caller to count as it sees fit. The L4 parsers return the destination port (the ICMP type).
 * Only UAPI structures are used, so any kernel's headers compile this.
 */
#ifndef XDP_IP_COUNTER_PARSING_H
#define XDP_IP_COUNTER_PARSING_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#define VLAN_MAX_DEPTH 2   /* 802.1Q and 802.1ad tags, in any order */
#define IPV6_EXT_MAX_DEPTH 8

/* Negative verdicts: why a frame carries no (source, protocol, port) to record. */
#define PARSE_MALFORMED -1 /* truncated, or a header that contradicts itself */
#define PARSE_TOO_DEEP -2  /* more VLAN tags or extension headers than we walk */
#define PARSE_FRAGMENT -3  /* a non-first fragment: no L4 header in it */

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define net16(x) __builtin_bswap16(x)
#else
#define net16(x) (x)
#endif

struct hdr_cursor {
    void *pos;
};

struct vlan_tag {
    __be16 tci;
    __be16 encapsulated_proto;
};

static __always_inline int proto_is_vlan(__u16 h_proto)
{
    return h_proto == net16(ETH_P_8021Q) || h_proto == net16(ETH_P_8021AD);
}

/* Ethernet, then up to VLAN_MAX_DEPTH tags. Returns the inner EtherType (network order). */
static __always_inline int parse_ethhdr(struct hdr_cursor *c, void *end)
{
    struct ethhdr *eth = c->pos;
    if ((void *)(eth + 1) > end)
        return PARSE_MALFORMED;
    c->pos = eth + 1;
    __u16 h_proto = eth->h_proto;

#pragma unroll
    for (int i = 0; i < VLAN_MAX_DEPTH; i++) {
        if (!proto_is_vlan(h_proto))
            return h_proto;
        struct vlan_tag *tag = c->pos;
        if ((void *)(tag + 1) > end)
            return PARSE_MALFORMED;
        c->pos = tag + 1;
        h_proto = tag->encapsulated_proto;
    }
    if (proto_is_vlan(h_proto))
        return PARSE_TOO_DEEP;
    return h_proto;
}

/* IPv4 with options honoured. Returns the L4 protocol; *ip_len gets the total length. */
static __always_inline int parse_iphdr(struct hdr_cursor *c, void *end, struct iphdr **iph_out,
                                       __u32 *ip_len)
{
    struct iphdr *iph = c->pos;
    if ((void *)(iph + 1) > end)
        return PARSE_MALFORMED;
    if (iph->version != 4 || iph->ihl < 5)
        return PARSE_MALFORMED;
    __u32 hdrsize = iph->ihl * 4;
    if (c->pos + hdrsize > end)
        return PARSE_MALFORMED;
    __u32 tot_len = net16(iph->tot_len);
    if (tot_len < hdrsize)
        return PARSE_MALFORMED;
    c->pos += hdrsize;
    *iph_out = iph;
    *ip_len = tot_len;
    /* Fragment offset (low 13 bits) != 0: a later fragment, which carries no L4 header. */
    if (iph->frag_off & net16(0x1fff))
        return PARSE_FRAGMENT;
    return iph->protocol;
}

struct ipv6_opt_hdr_generic {
    __u8 nexthdr;
    __u8 hdrlen;
};

struct ipv6_frag_hdr {
    __u8 nexthdr;
    __u8 reserved;
    __be16 frag_off; /* offset << 3 | res | M */
    __be32 identification;
};

/* IPv6 and its extension-header chain. Returns the upper-layer protocol. */
static __always_inline int parse_ip6hdr(struct hdr_cursor *c, void *end, struct ipv6hdr **ip6h_out,
                                        __u32 *ip_len)
{
    struct ipv6hdr *ip6h = c->pos;
    if ((void *)(ip6h + 1) > end)
        return PARSE_MALFORMED;
    if (ip6h->version != 6)
        return PARSE_MALFORMED;
    c->pos = ip6h + 1;
    *ip6h_out = ip6h;
    /* Payload length 0 is a jumbogram (RFC 2675): count what the frame holds. */
    __u32 payload = net16(ip6h->payload_len);
    *ip_len = payload ? payload + sizeof(*ip6h) : (__u32)(end - (void *)ip6h);

    __u8 nexthdr = ip6h->nexthdr;
#pragma unroll
    for (int i = 0; i < IPV6_EXT_MAX_DEPTH; i++) {
        switch (nexthdr) {
        case IPPROTO_HOPOPTS:
        case IPPROTO_ROUTING:
        case IPPROTO_DSTOPTS:
        case 135: /* Mobility */
        case 139: /* HIP */
        case 140: /* Shim6 */ {
            struct ipv6_opt_hdr_generic *h = c->pos;
            if ((void *)(h + 1) > end)
                return PARSE_MALFORMED;
            __u32 len = ((__u32)h->hdrlen + 1) * 8;
            if (c->pos + len > end)
                return PARSE_MALFORMED;
            nexthdr = h->nexthdr;
            c->pos += len;
            break;
        }
        case IPPROTO_AH: {
            struct ipv6_opt_hdr_generic *h = c->pos;
            if ((void *)(h + 1) > end)
                return PARSE_MALFORMED;
            __u32 len = ((__u32)h->hdrlen + 2) * 4;
            if (c->pos + len > end)
                return PARSE_MALFORMED;
            nexthdr = h->nexthdr;
            c->pos += len;
            break;
        }
        case IPPROTO_FRAGMENT: {
            struct ipv6_frag_hdr *h = c->pos;
            if ((void *)(h + 1) > end)
                return PARSE_MALFORMED;
            if (h->frag_off & net16(0xfff8))
                return PARSE_FRAGMENT;
            nexthdr = h->nexthdr;
            c->pos = h + 1;
            break;
        }
        default:
            /* An upper layer, or something we do not walk (ESP, No Next Header, ...). */
            return nexthdr;
        }
    }
    switch (nexthdr) {
    case IPPROTO_HOPOPTS:
    case IPPROTO_ROUTING:
    case IPPROTO_DSTOPTS:
    case IPPROTO_AH:
    case IPPROTO_FRAGMENT:
    case 135:
    case 139:
    case 140:
        return PARSE_TOO_DEEP;
    }
    return nexthdr;
}

/* TCP: the whole header (data offset * 4 bytes, options included) must be present. */
static __always_inline int parse_tcp_dport(struct hdr_cursor *c, void *end)
{
    struct tcphdr *th = c->pos;
    if ((void *)(th + 1) > end)
        return PARSE_MALFORMED;
    __u32 hdrsize = th->doff * 4;
    if (hdrsize < sizeof(*th))
        return PARSE_MALFORMED;
    if (c->pos + hdrsize > end)
        return PARSE_MALFORMED;
    c->pos += hdrsize;
    return net16(th->dest);
}

/* UDP and UDP-Lite (RFC 3828: the same 8-byte header, its length field a checksum coverage). */
static __always_inline int parse_udp_dport(struct hdr_cursor *c, void *end)
{
    struct udphdr *uh = c->pos;
    if ((void *)(uh + 1) > end)
        return PARSE_MALFORMED;
    c->pos = uh + 1;
    return net16(uh->dest);
}

/* SCTP (RFC 9260): the 12-byte common header (ports, verification tag, checksum). */
struct sctp_common_hdr {
    __be16 source;
    __be16 dest;
    __be32 vtag;
    __le32 checksum;
};

static __always_inline int parse_sctp_dport(struct hdr_cursor *c, void *end)
{
    struct sctp_common_hdr *sh = c->pos;
    if ((void *)(sh + 1) > end)
        return PARSE_MALFORMED;
    c->pos = sh + 1;
    return net16(sh->dest);
}

/* DCCP (RFC 4340, 5.1): a generic header of 12 bytes, 16 with extended sequence numbers (X),
 * then options up to the data offset (in 32-bit words), which must cover the generic header;
 * the whole header, options included, must be present. */
struct dccp_generic_hdr {
    __be16 source;
    __be16 dest;
    __u8 doff;
    __u8 ccval_cscov;
    __be16 checksum;
    __u8 res_type_x; /* Res (3 bits), Type (4), X (1: the low bit) */
    __u8 seq_high;
    __be16 seq_low;
};

static __always_inline int parse_dccp_dport(struct hdr_cursor *c, void *end)
{
    struct dccp_generic_hdr *dh = c->pos;
    if ((void *)(dh + 1) > end)
        return PARSE_MALFORMED;
    __u32 generic = (dh->res_type_x & 1) ? 16 : 12;
    __u32 hdrsize = dh->doff * 4;
    if (hdrsize < generic)
        return PARSE_MALFORMED;
    if (c->pos + hdrsize > end)
        return PARSE_MALFORMED;
    c->pos += hdrsize;
    return net16(dh->dest);
}

/* ICMP and ICMPv6: type, code, checksum and the 4 bytes after them (the identifier and
 * sequence of an echo, the unused or pointer word of an error) are the 8 bytes every message
 * has. Returns the message type. */
struct icmp_common_hdr {
    __u8 type;
    __u8 code;
    __be16 checksum;
    __be32 rest;
};

static __always_inline int parse_icmp_type(struct hdr_cursor *c, void *end)
{
    struct icmp_common_hdr *ih = c->pos;
    if ((void *)(ih + 1) > end)
        return PARSE_MALFORMED;
    c->pos = ih + 1;
    return ih->type;
}

#endif /* XDP_IP_COUNTER_PARSING_H */
