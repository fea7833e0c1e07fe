/* xdp_ip_counter: record (ingress interface, source address, L4 protocol, destination port)
 * for every IPv4/IPv6 TCP or UDP frame to a watched port. Parse, filter, record; always XDP_PASS.
 *
 * Compiled by bcc at start-up with these -D settings from the daemon:
 *   MAX_ENTRIES  capacity of the sources LRU hash
 *   LRU_FLAGS    map flags for it (0, or BPF_F_NO_COMMON_LRU)
 *   CLOCK_JIFFY_ZERO, CLOCK_TICK_NS   the clock (below), calibrated by xdp_ip_counter/clock.py
 * The daemon does not pass CACHE_BITS, log2 of the slots per CPU of the cache of recently seen
 * keys: it is 10 unless a build sets it, and userspace reads the slot count from the map.
 *
 * Benchmark steps (bench/kernel_cost.py), never set by the daemon: the program as it was before
 * each of its optimisations, so that the benchmark's baselines parse with this code.
 *   COARSE_CLOCK  clock_now() calls bpf_ktime_get_coarse_ns() instead of reading jiffies
 *   NO_CACHE      no per-CPU cache: every recorded frame is an LRU-hash lookup and in-place
 *                 update, an insert for a new key (with COARSE_CLOCK: the program's first
 *                 version, the benchmark's baseline)
 *   PARSE_ONLY    parse, filter and count the outcome, but record nothing
 */
#include <uapi/linux/bpf.h>
#include "source_key.h" /* struct source_key, struct port_filter, outcomes, the parse */

#ifndef MAX_ENTRIES
#define MAX_ENTRIES 262144
#endif
#ifndef LRU_FLAGS
#define LRU_FLAGS 0
#endif

/* Times are clock_now() below; bytes are IP bytes (header included). */
struct source_value {
    __u64 first_seen;
    __u64 last_seen;
    __u64 packets;
    __u64 bytes;
};

/* The clock of first/last seen: CLOCK_MONOTONIC at the start of the current jiffy. The kernel
 * starts jiffies at multiples of the tick in CLOCK_MONOTONIC, so jiffy j began at
 * (j - CLOCK_JIFFY_ZERO) * CLOCK_TICK_NS; userspace reads jiffies the same way (clock.py
 * KernelClock). bpf_jiffies64() is inlined by the verifier, unlike bpf_ktime_get_coarse_ns(),
 * whose helper call costs as much as the rest of the hot path. */
#ifdef COARSE_CLOCK
static __always_inline __u64 clock_now(void)
{
    return bpf_ktime_get_coarse_ns();
}
#else
#if !defined(CLOCK_JIFFY_ZERO) || !defined(CLOCK_TICK_NS)
#error "CLOCK_JIFFY_ZERO and CLOCK_TICK_NS must be defined (xdp_ip_counter.clock calibrates them)"
#endif
static __always_inline __u64 clock_now(void)
{
    return (bpf_jiffies64() - CLOCK_JIFFY_ZERO) * CLOCK_TICK_NS;
}
#endif

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

static __always_inline int port_watched(__u16 port)
{
    __u32 zero = 0;
    return port_in_filter(port_filter.lookup(&zero), port);
}

/* -- recording ----------------------------------------------------------------------------
 *
 * A lookup in the shared LRU hash (hash the key, walk the bucket, mark the node referenced, two
 * atomic adds) is most of what a frame costs. A source that sends many frames is therefore
 * counted in a per-CPU, direct-mapped cache of recently seen keys (an array map: its lookup is
 * inlined, and per CPU it needs no atomics): while the clock stays on the same tick,
 * further frames of the cached key only add to the slot's pending packets and bytes. The first
 * frame of a key on a new tick goes to the sources map as before (last_seen = that tick), after
 * the slot's pending counts were moved there. So:
 *
 * - first_seen and last_seen in the sources map are always exact: a slot never holds a tick
 *   the map has not seen (pending counts are all from the tick in slot->stamp, and that tick
 *   was written to last_seen when the slot was stamped).
 * - packets and bytes = the map's value + the pending counts of the slots holding that key on
 *   every CPU. SourceCache.read_sources() (xdp_ip_counter/cache.py) adds them (seq below makes
 *   that read consistent), and SourceCache.flush(), once DataPath.close() has detached the
 *   program, moves them into the map.
 * - Pending counts belong to an entry only if that entry existed at their tick:
 *   entry.first_seen <= slot->stamp. Counts of an entry that was removed (expired, or evicted
 *   by the LRU) are therefore never added to a later entry of the same key. When their entry
 *   is missing only for a moment (DataPath.expire() takes a refreshed entry out and puts it
 *   back, keeping its first_seen), the slot holds them (and caches nothing new) for up to
 *   HOLD_NS instead of dropping them.
 */
#ifndef CACHE_BITS
#define CACHE_BITS 10
#endif
#define CACHE_SLOTS (1 << CACHE_BITS)
#define HOLD_NS 1000000000ULL

/* One slot of the per-CPU cache. The field order is part of the protocol with the reader
 * (SourceCache.read_sources), which copies a slot in ascending address order: the counts first,
 * the key after them, seq last. */
struct cache_slot {
    __u64 packets;          /* pending: counted here, not yet in the sources map */
    __u64 bytes;
    __u64 stamp;            /* the tick all pending counts are from */
    struct source_key key;  /* family 0: an empty slot */
    __u64 seq;              /* odd while pending counts are being moved out of the slot */
};

BPF_PERCPU_ARRAY(source_cache, struct cache_slot, CACHE_SLOTS);

/* Slot of a key: three multiply-xor rounds over its 64-bit words, top CACHE_BITS bits.
 * Mirrored in xdp_ip_counter/cache.py (cache_index); a kernel test checks the two agree. */
static __always_inline __u32 cache_index(const struct source_key *key)
{
    const __u64 *word = (const __u64 *)key;
    __u64 h = word[0] * 0x9E3779B97F4A7C15ULL;
    h = (h ^ word[1]) * 0xC2B2AE3D27D4EB4FULL;
    h = (h ^ word[2]) * 0x165667B19E3779F9ULL;
    return h >> (64 - CACHE_BITS);
}

static __always_inline int same_key(const struct source_key *a, const struct source_key *b)
{
    const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2])) == 0;
}

static __always_inline void update_entry(struct source_value *value, __u64 now, __u64 packets,
                                         __u64 bytes)
{
    if (value->last_seen < now)
        value->last_seen = now;
    __sync_fetch_and_add(&value->packets, packets);
    __sync_fetch_and_add(&value->bytes, bytes);
}

/* Count one frame in the sources map itself: update the entry, or insert a new one. */
static __always_inline int record_in_map(struct source_key *key, __u32 ip_len, __u64 now)
{
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
    update_entry(value, now, 1, ip_len);
    return OUTCOME_RECORDED;
}

/* Move the slot's pending counts into the entry they belong to. Returns 1 when the slot is free
 * for another key or tick (moved, nothing pending, or dropped: their entry is gone for good),
 * 0 when it must hold them a while longer (their entry is missing, but only just). */
static __always_inline int settle(struct cache_slot *slot, __u64 now)
{
    if (slot->packets == 0)
        return 1;
    struct source_value *owner = sources.lookup(&slot->key);
    int belongs = owner && owner->first_seen <= slot->stamp;
    if (!belongs && now - slot->stamp < HOLD_NS)
        return 0;
    __sync_fetch_and_add(&slot->seq, 1);
    if (belongs && owner)
        update_entry(owner, 0, slot->packets, slot->bytes);
    slot->packets = 0;
    slot->bytes = 0;
    __sync_fetch_and_add(&slot->seq, 1);
    return 1;
}

#ifdef NO_CACHE
static __always_inline int record(struct source_key *key, __u32 ip_len)
{
    return count(record_in_map(key, ip_len, clock_now()));
}
#else
static __always_inline int record(struct source_key *key, __u32 ip_len)
{
    __u64 now = clock_now();
    __u32 index = cache_index(key);
    struct cache_slot *slot = source_cache.lookup(&index);
    if (!slot)
        return count(record_in_map(key, ip_len, now));
    /* The hot path: this key, this tick, on this CPU. */
    if (slot->stamp == now && same_key(&slot->key, key)) {
        slot->packets += 1;
        slot->bytes += ip_len;
        return count(OUTCOME_RECORDED);
    }
    if (!settle(slot, now))
        return count(record_in_map(key, ip_len, now));
    int outcome = record_in_map(key, ip_len, now);
    if (outcome != OUTCOME_INSERT_FAILED) {
        /* Nothing is pending: the reader ignores a slot whose packets are 0. */
        slot->key = *key;
        slot->stamp = now;
    }
    return count(outcome);
}
#endif /* NO_CACHE */

int xdp_ip_counter(struct xdp_md *ctx)
{
    struct source_key key = {};
    __u32 ip_len = 0;

    int outcome = parse_source_key(ctx, &key, &ip_len);
    if (outcome != SOURCE_KEY_PARSED)
        return count(outcome);
    if (!port_watched(key.port))
        return count(OUTCOME_PORT_FILTERED);
#ifdef PARSE_ONLY
    return count(OUTCOME_RECORDED);
#else
    return record(&key, ip_len);
#endif
}
