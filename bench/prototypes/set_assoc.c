/* Prototype for issue 12 (the new-source path), measured by bench/prototype_cost.py; not the
 * product. The product's key (interface, source, protocol, port), parsed by the product's
 * bpf/source_key.h, recorded in a set-associative table of our own in an array map instead of an
 * LRU hash:
 *
 * - The table is an array of SETS sets of WAYS slots of 64 bytes (one cache line each); one
 *   array element is one whole set, so a frame costs one inlined array lookup and the cache
 *   lines of one set. A key's set is the top bits of a multiply-xor hash of its three words.
 * - A slot is claimed by a compare-and-exchange on its tag word (the hash, never 0) from the
 *   value the frame saw there; whoever wins writes the key and the counts, a loser scans the
 *   set once more. Two CPUs that claim the same new key at once can end up in two slots of the
 *   same set (same tag): the reader merges duplicates, and their counts add up exactly.
 * - Lazy expiry: a slot whose last_seen is more than WINDOW_NS old is free.
 * - Replacement when a set has no free slot: the one-packet slot with the oldest last_seen, and
 *   only when there is none the established slot with the oldest last_seen. A flood of
 *   one-packet sources therefore churns the one-packet slots and leaves sources that keep
 *   sending where they are (EVICT_OLDEST switches this off, for contrast: oldest last_seen).
 * - BPF_F_MMAPABLE: userspace reads (and the benchmark prefills) the table through mmap.
 *
 * -D settings: SET_BITS (log2 of the sets), WAYS, WINDOW_NS, CLOCK_JIFFY_ZERO and CLOCK_TICK_NS
 * (the product's clock), ADMISSION_BUDGET (new keys a CPU may insert per tick; unset: no check),
 * EVICT_OLDEST, TAG_LINE (below). 16 ways do not load: the verifier gives up (E2BIG) on the
 * unrolled scans done twice.
 */
#include <uapi/linux/bpf.h>
#include "source_key.h" /* the product's key, port filter and parse */

#ifndef SET_BITS
#define SET_BITS 13
#endif
#ifndef WAYS
#define WAYS 8 /* a power of 2, at most 16: the way travels in 4 bits of the eviction rank */
#endif
#ifndef WINDOW_NS
#define WINDOW_NS 60000000000ULL
#endif
#define SETS (1 << SET_BITS)

#ifndef TAG_LINE
struct slot {
    __u64 tag;  /* 0: never used; else the key's hash | 1, set by compare-and-exchange */
    __u64 first_seen;
    __u64 last_seen;
    __u64 packets;
    __u64 bytes;
    struct source_key key;
};  /* 64 bytes */

struct set {
    struct slot way[WAYS];
};
#else
/* TAG_LINE: the set's tag words in one cache line ahead of its slots, so that a new key reads
 * one line (the tags) and writes one (its slot) instead of reading all the ways. A tag word is
 * the key's hash (high 32 bits, never 0) | ESTABLISHED (seen in two frames or more) | the
 * stamp (last seen, in units of 2^30 ns, 31 bits): the replacement rule needs nothing else. */
struct slot {
    __u64 first_seen;
    __u64 last_seen;
    __u64 packets;
    __u64 bytes;
    struct source_key key;
    __u64 unused;
};  /* 64 bytes */

struct set {
    __u64 tag[WAYS];
    struct slot way[WAYS];
};
#endif

/* Per-CPU outcome counters: recorded in its slot, in a free slot, not recorded (parse or
 * filter), in an evicted live slot, not admitted (budget spent), lost (claim lost twice). */
enum { P_RECORDED, P_NEW, P_OTHER, P_EVICTED, P_NOT_ADMITTED, P_LOST, P_MAX };

BPF_F_TABLE("array", int, struct set, table, SETS, BPF_F_MMAPABLE);
BPF_ARRAY(port_filter, struct port_filter, 1);
BPF_PERCPU_ARRAY(stats, __u64, P_MAX);

#ifdef ADMISSION_BUDGET
struct budget {
    __u64 tick;
    __u64 left;
};
BPF_PERCPU_ARRAY(admission, struct budget, 1);
#endif

static __always_inline int count(__u32 outcome)
{
    __u64 *counter = stats.lookup(&outcome);
    if (counter)
        *counter += 1;
    return XDP_PASS;
}

static __always_inline __u64 clock_now(void)
{
    return (bpf_jiffies64() - CLOCK_JIFFY_ZERO) * CLOCK_TICK_NS;
}

static __always_inline int port_watched(__u16 port)
{
    __u32 zero = 0;
    return port_in_filter(port_filter.lookup(&zero), port);
}

static __always_inline __u64 key_hash(const struct source_key *key)
{
    const __u64 *word = (const __u64 *)key;
    __u64 h = word[0] * 0x9E3779B97F4A7C15ULL;
    h = (h ^ word[1]) * 0xC2B2AE3D27D4EB4FULL;
    h = (h ^ word[2]) * 0x165667B19E3779F9ULL;
    return h ^ (h >> 29);
}

static __always_inline int same_key(const struct source_key *a, const struct source_key *b)
{
    const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2])) == 0;
}

#ifdef ADMISSION_BUDGET
static __always_inline int admitted(__u64 now)
{
    __u32 zero = 0;
    struct budget *b = admission.lookup(&zero);
    if (!b)
        return 0;
    if (b->tick != now) {
        b->tick = now;
        b->left = ADMISSION_BUDGET;
    }
    if (b->left == 0)
        return 0;
    b->left -= 1;
    return 1;
}
#endif

#define WAY_BITS 4
#define CLASS_SHIFT 61
#ifdef TAG_LINE
#define STAMP_SHIFT 30
#define STAMP_MASK 0x7fffffffULL
#define ESTABLISHED (1ULL << 31)
#define WINDOW_STAMPS ((WINDOW_NS >> STAMP_SHIFT) + 1)

static __always_inline int tag_free(__u64 word, __u64 stamp)
{
    return word == 0 || ((stamp - word) & STAMP_MASK) > WINDOW_STAMPS;
}

static __always_inline __u64 tag_rank(__u64 word, int w, __u64 stamp)
{
    if (tag_free(word, stamp))
        return w;
#ifdef EVICT_OLDEST
    __u64 class = 1;
#else
    __u64 class = word & ESTABLISHED ? 2 : 1;
#endif
    return (class << CLASS_SHIFT) | ((word & STAMP_MASK) << WAY_BITS) | w;
}

static __always_inline int claim(__u64 *tag_word, struct slot *s, struct source_key *key,
                                 __u64 want, __u64 now, __u32 ip_len, __u64 rank)
{
    __u64 stamp = (now >> STAMP_SHIFT) & STAMP_MASK;
    __u64 seen = *tag_word;
    int was_free = rank < (1 << WAY_BITS);
    if (was_free && !tag_free(seen, stamp))
        return -1;
#ifdef ADMISSION_BUDGET
    if (!admitted(now))
        return P_NOT_ADMITTED;
#endif
    if (__sync_val_compare_and_swap(tag_word, seen, want | stamp) != seen)
        return -1;
    if (seen != 0) {
        s->packets = 0;
        s->bytes = 0;
    }
    s->first_seen = now;
    s->last_seen = now;
    s->key = *key;
    __sync_fetch_and_add(&s->packets, 1);
    __sync_fetch_and_add(&s->bytes, ip_len);
    return was_free ? P_NEW : P_EVICTED;
}

static __always_inline int try_record(struct set *set, struct source_key *key, __u64 hash,
                                      __u64 now, __u32 ip_len)
{
    __u64 stamp = (now >> STAMP_SHIFT) & STAMP_MASK;
    __u64 want = ((hash >> 32) | 1) << 32;
#pragma unroll
    for (int w = 0; w < WAYS; w++) {
        __u64 word = set->tag[w];
        if ((word >> 32) == (want >> 32) && same_key(&set->way[w].key, key)) {
            struct slot *s = &set->way[w];
            if (s->last_seen < now)
                s->last_seen = now;
            __sync_fetch_and_add(&s->packets, 1);
            __sync_fetch_and_add(&s->bytes, ip_len);
            __u64 fresh = want | ESTABLISHED | stamp;
            if (word != fresh) /* once per key and stamp; a lost race only delays it */
                __sync_val_compare_and_swap(&set->tag[w], word, fresh);
            return P_RECORDED;
        }
    }
    __u64 lowest = ~0ULL;
#pragma unroll
    for (int w = 0; w < WAYS; w++) {
        __u64 rank = tag_rank(set->tag[w], w, stamp);
        if (rank < lowest)
            lowest = rank;
    }
    int victim = lowest & ((1 << WAY_BITS) - 1);
#pragma unroll
    for (int w = 0; w < WAYS; w++) {
        if (victim == w)
            return claim(&set->tag[w], &set->way[w], key, want, now, ip_len, lowest);
    }
    return -1;
}
#else
/* Eviction rank of a slot (lower goes first), with the way in its low WAY_BITS bits: free
 * (never used, or last seen more than a window ago) < one-packet < established, older before
 * newer within a class. The way travels in the rank, so the minimum names the victim without
 * a second variable (which keeps the verifier's states few). */
#define AGE_MASK ((1ULL << (CLASS_SHIFT - WAY_BITS)) - 1)
static __always_inline __u64 rank_of(struct slot *s, int w, __u64 now)
{
    if (s->tag == 0 || s->last_seen + WINDOW_NS < now)
        return w;
#ifdef EVICT_OLDEST
    __u64 class = 1;
#else
    __u64 class = s->packets <= 1 ? 1 : 2;
#endif
    return (class << CLASS_SHIFT) | (((s->last_seen >> WAY_BITS) & AGE_MASK) << WAY_BITS) | w;
}

/* Claim the victim slot and record the frame in it. -1 when another CPU changed the slot
 * since it was ranked free, or won the compare-and-exchange: the caller scans again. */
static __always_inline int claim(struct slot *s, struct source_key *key, __u64 tag, __u64 now,
                                 __u32 ip_len, __u64 rank)
{
    __u64 seen = s->tag;
    int was_free = rank < (1 << WAY_BITS);
    if (was_free && seen != 0 && s->last_seen + WINDOW_NS >= now)
        return -1;
#ifdef ADMISSION_BUDGET
    if (!admitted(now))
        return P_NOT_ADMITTED;
#endif
    if (__sync_val_compare_and_swap(&s->tag, seen, tag) != seen)
        return -1;
    /* Ours now. The counts are added atomically after the key is written: a CPU that sees the
     * key (and adds) before we add loses nothing. A slot that was never used holds zeros. */
    if (seen != 0) {
        s->packets = 0;
        s->bytes = 0;
    }
    s->first_seen = now;
    s->last_seen = now;
    s->key = *key;
    __sync_fetch_and_add(&s->packets, 1);
    __sync_fetch_and_add(&s->bytes, ip_len);
    return was_free ? P_NEW : P_EVICTED;
}

/* Update the key's slot in the set, or claim a victim for it. Returns the outcome, or -1 when
 * the claim lost a race (the caller tries once more, and then sees the winner's key). */
static __always_inline int try_record(struct set *set, struct source_key *key, __u64 tag,
                                      __u64 now, __u32 ip_len)
{
#pragma unroll
    for (int w = 0; w < WAYS; w++) {
        struct slot *s = &set->way[w];
        if (s->tag == tag && same_key(&s->key, key)) {
            if (s->last_seen < now)
                s->last_seen = now;
            __sync_fetch_and_add(&s->packets, 1);
            __sync_fetch_and_add(&s->bytes, ip_len);
            return P_RECORDED;
        }
    }
    __u64 lowest = ~0ULL;
#pragma unroll
    for (int w = 0; w < WAYS; w++) {
        __u64 rank = rank_of(&set->way[w], w, now);
        if (rank < lowest)
            lowest = rank;
    }
    int victim = lowest & ((1 << WAY_BITS) - 1);
#pragma unroll
    for (int w = 0; w < WAYS; w++) {
        if (victim == w)
            return claim(&set->way[w], key, tag, now, ip_len, lowest);
    }
    return -1;
}

#endif /* TAG_LINE */

static __always_inline int record(struct source_key *key, __u32 ip_len)
{
    __u64 now = clock_now();
    __u64 hash = key_hash(key);
    int index = hash >> (64 - SET_BITS);
    struct set *set = table.lookup(&index);
    if (!set)
        return count(P_LOST);
#ifdef TAG_LINE
    __u64 tag = hash;
#else
    __u64 tag = hash | 1;
#endif
    int outcome = try_record(set, key, tag, now, ip_len);
    if (outcome < 0)
        outcome = try_record(set, key, tag, now, ip_len);
    return count(outcome < 0 ? P_LOST : outcome);
}

int set_assoc(struct xdp_md *ctx)
{
    struct source_key key = {};
    __u32 ip_len = 0;

    if (parse_source_key(ctx, &key, &ip_len) != SOURCE_KEY_PARSED || !port_watched(key.port))
        return count(P_OTHER);
    return record(&key, ip_len);
}
