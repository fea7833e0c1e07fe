/* The program's first version, kept as the benchmarks' baseline (issue 12's "straightforward
 * LRU-hash program"): the product's parse and port filter (bpf/source_key.h), then one lookup
 * in a shared LRU hash and an in-place update, an insert when the key is new; stamped with
 * bpf_ktime_get_coarse_ns(). It is what bpf/xdp_ip_counter.c built with -DNO_CACHE
 * -DCOARSE_CLOCK was before the set-associative table replaced the hash (commit 8986694).
 *
 * Compiled by bench/ with bcc, -I bpf/:
 *   MAX_ENTRIES  capacity of the sources LRU hash (default 262144)
 */
#include <uapi/linux/bpf.h>
#include "source_key.h" /* struct source_key, struct port_filter, outcomes, the parse */

#ifndef MAX_ENTRIES
#define MAX_ENTRIES 262144
#endif

/* Times are bpf_ktime_get_coarse_ns(); bytes are IP bytes (header included). */
struct source_value {
    __u64 first_seen;
    __u64 last_seen;
    __u64 packets;
    __u64 bytes;
};

BPF_F_TABLE("lru_hash", struct source_key, struct source_value, sources, MAX_ENTRIES, 0);
BPF_ARRAY(port_filter, struct port_filter, 1);
BPF_PERCPU_ARRAY(stats, __u64, OUTCOME_MAX);

static __always_inline int count(__u32 outcome)
{
    __u64 *counter = stats.lookup(&outcome);
    if (counter)
        *counter += 1;
    return XDP_PASS;
}

static __always_inline int port_watched(__u16 port)
{
    __u32 zero = 0;
    return port_in_filter(port_filter.lookup(&zero), port);
}

static __always_inline int record(struct source_key *key, __u32 ip_len)
{
    __u64 now = bpf_ktime_get_coarse_ns();
    struct source_value *value = sources.lookup(key);
    if (!value) {
        struct source_value fresh = {
            .first_seen = now, .last_seen = now, .packets = 1, .bytes = ip_len};
        if (sources.insert(key, &fresh) == 0)
            return OUTCOME_RECORDED_NEW;
        /* Another CPU inserted the same key between our lookup and insert. */
        value = sources.lookup(key);
        if (!value)
            return OUTCOME_INSERT_FAILED;
    }
    if (value->last_seen < now)
        value->last_seen = now;
    __sync_fetch_and_add(&value->packets, 1);
    __sync_fetch_and_add(&value->bytes, ip_len);
    return OUTCOME_RECORDED;
}

int xdp_ip_counter(struct xdp_md *ctx)
{
    struct source_key key = {};
    __u32 ip_len = 0;

    int outcome = parse_source_key(ctx, &key, &ip_len, PROTOCOL_TCP | PROTOCOL_UDP);
    if (outcome != SOURCE_KEY_PARSED)
        return count(outcome);
    if (!port_watched(key.port))
        return count(OUTCOME_PORT_FILTERED);
    return count(record(&key, ip_len));
}
