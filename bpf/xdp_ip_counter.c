/* xdp_ip_counter: record (ingress interface, source address, L4 protocol, destination port)
 * for every IPv4/IPv6 frame of a recorded protocol (TCP, UDP, SCTP, UDP-Lite, DCCP to a watched
 * port; ICMP, ICMPv6 of a watched type) from a source the lists let through, in an exact table
 * and in a sliding-window cardinality sketch. Parse, filter, record; always XDP_PASS.
 *
 * Compiled by bcc at start-up with these -D settings from the daemon (xdp_ip_counter/bpf.py):
 *   SETS         sets of the sources table (WAYS slots each): a multiple of BLOCK_SETS
 *   BLOCK_SETS   sets of a block, a power of two: a key's two sets are in one block
 *   NSKETCH      sketches (4 "other ports" sketches + 4 per port with a sketch of its own)
 *   CLOCK_JIFFY_ZERO, CLOCK_TICK_NS   the clock (below), calibrated by xdp_ip_counter/clock.py
 *   ORDERED_STORES 1 where stores are seen in program order (x86): claim() publishes a slot
 *                with a plain store
 *   MAX_SOURCE_PREFIXES  room of each source list (config.MAX_SOURCE_PREFIXES)
 *
 * Benchmark steps (bench/kernel_cost.py), never set by the daemon:
 *   COARSE_CLOCK  clock_now() calls bpf_ktime_get_coarse_ns() instead of reading jiffies
 *   PARSE_ONLY    parse, filter and count the outcome, but record nothing
 *   NO_SKETCH     record in the table only: no sketch update
 * (The first version, one LRU-hash lookup and an insert per new source, is
 * bench/programs/first_version.c: the benchmarks' baseline.)
 */
#include <uapi/linux/bpf.h>
#include "source_key.h" /* struct source_key, struct port_filter, outcomes, the parse */

#ifndef SETS
#define SETS 12288
#endif
#ifndef BLOCK_SETS
#define BLOCK_SETS 2048
#endif
#ifndef NSKETCH
#define NSKETCH 20
#endif
#ifndef ORDERED_STORES
#define ORDERED_STORES 0
#endif
#ifndef MAX_SOURCE_PREFIXES
#define MAX_SOURCE_PREFIXES 16384
#endif
#define WAYS 8 /* the verifier gives up (E2BIG) at 16 */

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

/* -- the sources table ---------------------------------------------------------------------
 *
 * A set-associative table of our own in an array map, instead of an LRU hash, whose miss and
 * insert (a cold bucket and element walk, allocation, list work) cost ~400 ns per new source.
 * One array element is one set: a line of WAYS tag words, then WAYS slots of 64 bytes. A frame
 * of a key in its primary set costs an inlined array lookup, the tag line and its slot's line;
 * a key in its alternate set, or a new key, the other set's tag line too.
 *
 * Two sets per key (the power of two choices): a set of 8 ways that 9 keys hash to would lose
 * one of them with a table a fifth full; a new key goes to the emptier of its two sets, and
 * with 1.5 slots per entry of capacity (xdp_ip_counter/table.py, sets_for) no set overflows
 * below capacity. A key's primary set is the hash's top 32 bits scaled to SETS; its alternate
 * is the primary xor an odd offset below BLOCK_SETS taken from the tag, so each is the other's
 * alternate and both lie in one block (userspace reads a block at a time). A tag word is
 *   TAG_HASH << 32 | ESTABLISHED | stamp
 * TAG_HASH = the hash's low 32 bits with bit 0 set (never 0) and bit 1 saying which of its two
 * sets the slot is in (SECONDARY: the alternate); stamp = last seen in units of 2^30 ns (31
 * bits); ESTABLISHED = seen in two frames or more. A tag word of 0 was never used; a tag word
 * whose hash part is 0 and is not 0 (BUSY) is being written by one CPU: nobody else matches it,
 * evicts it or reads it.
 *
 * - Lazy expiry: a slot whose stamp is more than the window (port_filter.window_stamps) old is
 *   free. A key that comes back after that starts a new entry (first seen, counts from zero).
 * - A new key goes to its primary set if that has ROOMY free slots or more, else to the set
 *   with more free slots (the primary on a tie). When neither has one: the one-packet slot
 *   of the two sets seen longest ago (on a tie, the lower way), and only when there is none
 *   the established slot seen longest ago. A flood of one-packet
 *   sources churns the one-packet slots and leaves sources that keep sending where they are
 *   (the LRU's active list did that before). A live slot given up is counted (EVENT_EVICTED)
 *   and marks the victim's sketch as lossy for this tick: its count is an estimate for a
 *   window.
 * - Claiming: compare-and-exchange of the tag word from the value seen to BUSY, write the key
 *   and the first frame's counts, then publish the tag: a plain store where stores are seen
 *   in program order (x86, -DORDERED_STORES from the loader), an atomic exchange elsewhere.
 *   Another CPU with the same new key meanwhile claims a second slot (of either set): the
 *   reader (xdp_ip_counter/table.py) merges such duplicates, and the counts add up exactly.
 * - Counts are added atomically: a source sending on several RX queues loses nothing.
 * - BPF_F_MMAPABLE: userspace reads the table through mmap, without syscalls or copies.
 */
/* lists: the source lists the slot's source was last let through by (port_filter.source_lists
 * then): while that is the filter's value, its frames are counted without asking the lists. */
struct slot {
    struct source_value value;
    struct source_key key;
    __u64 lists;
}; /* 64 bytes */

struct set {
    __u64 tag[WAYS];
    struct slot way[WAYS];
}; /* layout.SET_DTYPE mirrors it */

#define STAMP_SHIFT 30
#define STAMP_MASK 0x7fffffffULL
#define ESTABLISHED (1ULL << 31)
#define SECONDARY (2ULL << 32)
#define BUSY 1ULL
#define WAY_BITS 4
#define CLASS_SHIFT 61

BPF_F_TABLE("array", int, struct set, sources, SETS, BPF_F_MMAPABLE);
/* One word per set of the table: byte w is the fingerprint of way w's key (0 when the way was
 * never claimed), written by every claim before the slot is published, so that a key with no
 * fingerprint in either of its sets' words is certainly not in the table. With a new-source
 * budget, a flood's new sources past it are known new from this small array (1.5 bytes per
 * entry of max_entries), without the table's cold lines. Userspace writing the table itself
 * (carrying a pinned one over) writes the words again from it (table.py, fingerprint_words). */
BPF_F_TABLE("array", int, __u64, fingerprints, SETS, BPF_F_MMAPABLE);
BPF_ARRAY(port_filter, struct port_filter, 1);
/* The source lists (exclude_sources, include_sources): longest-prefix-match tries of source
 * prefixes: the family, then the address as the key holds it (an IPv4 /n is 4, ::ffff:a.b.c.d
 * of prefix length 8 + 96 + n; an IPv6 /n is 6, the address, 8 + n), so that a prefix of one
 * family never matches a source of the other (::/0 is not every IPv4 source).
 *
 * Asked only while port_filter.source_lists says a list is in force, and then not on every
 * frame (two lookups cost more than the rest of the hot path): a new source is asked before it
 * is given a slot, and the slot remembers the lists it was let through by (slot.lists = the
 * filter's source_lists, which holds a generation userspace changes with every rewrite of the
 * lists); a known source is asked again only when they differ, on its first frame after a
 * reload that rewrote them. Every frame is still judged by the lists in force. */
struct source_prefix {
    __u32 prefixlen;
    __u8 family;
    __u8 addr[16];
};
BPF_F_TABLE("lpm_trie", struct source_prefix, __u8, exclude_sources, MAX_SOURCE_PREFIXES,
            BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct source_prefix, __u8, include_sources, MAX_SOURCE_PREFIXES,
            BPF_F_NO_PREALLOC);
/* Per CPU: one counter per outcome (every frame increments exactly one), then the events. */
BPF_PERCPU_ARRAY(stats, __u64, STATS_MAX);

static __always_inline int count(__u32 outcome)
{
    __u64 *counter = stats.lookup(&outcome);
    if (counter)
        *counter += 1;
    return XDP_PASS;
}

/* -- the sketch ----------------------------------------------------------------------------
 *
 * A HyperLogLog of source addresses per (port, family, protocol) and tick of 2^TICK_SHIFT ns
 * (8.6 s): HLL_P index bits, 2^HLL_P one-byte registers, relative standard error
 * 1.04 / 2^(HLL_P / 2) = 0.81 %. Userspace unions (register-wise max) the ticks of the window.
 *
 * - Which sketch: for TCP and UDP sketch_of_port[port].id[class], class = (family == 6) * 2 +
 *   (proto == UDP); 0 sends the port to its class's "other ports" sketch (ids 0..3). The daemon
 *   gives ports of their own sketches (xdp_ip_counter/sketch.py, SketchPlan). The other
 *   protocols count in one sketch per (family, protocol) (other_sketch(), ids 4..11).
 * - The ring: RING slots per sketch, slot tick % RING; RING ticks cover the default window, so
 *   a pinned map keeps it across a restart. A slot remembers its tick; the first CPU to see a
 *   new tick there wins a compare-and-exchange on it and clears the registers (another CPU's
 *   register write racing that clear can be lost: a few frames per tick boundary).
 * - Shared, not per CPU: the memory does not grow with the CPUs. A register is written only
 *   when a rank beats it, which after the first moments of a tick is rare; two CPUs racing on
 *   one register can leave it at the lower rank of the two (never higher).
 * - A source goes into the sketch on its first frame of each tick (a new entry, or an entry
 *   last seen in an earlier tick): the hot path of a known source does not touch the sketch.
 * - lost: not 0 once the table gave up a source of this sketch's port in this tick (evicted,
 *   a claim lost twice, or not admitted past the new-source budget): while a tick of the
 *   window has it, the port's count is the estimate. A mark, not a count: the first loss of a
 *   tick writes it, later ones only read it (an atomic add per loss made every CPU in a flood
 *   write one shared line).
 */
#ifndef HLL_P
#define HLL_P 14
#endif
#define HLL_M (1 << HLL_P)
#define HLL_Q (64 - HLL_P)
#define RING 8
#define TICK_SHIFT 33
#define OTHER_SKETCHES 12

struct sketch_slot {
    __u64 tick;
    __u64 lost;
    __u8 reg[HLL_M];
};

struct sketch_ids {
    __u16 id[4]; /* by class */
};

BPF_F_TABLE("array", int, struct sketch_slot, sketches, NSKETCH * RING, BPF_F_MMAPABLE);
BPF_F_TABLE("array", int, struct sketch_ids, sketch_of_port, 65536, BPF_F_MMAPABLE);

/* The source address as the key holds it, as two little-endian 64-bit words: one multiply,
 * then murmur3's fmix64 (xor-shifts and multiplies: BPF has no rotate). Mirrored in
 * xdp_ip_counter/sketch.py (address_hash); a kernel test compares the registers. */
static __always_inline __u64 address_hash(const struct source_key *key)
{
    const __u64 *word = (const __u64 *)key->addr;
    __u64 h = (word[0] * 0x9E3779B97F4A7C15ULL) ^ word[1];
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

/* Leading zeros + 1 of x, HLL_Q + 1 when x is 0: a binary search (BPF has no clz). */
static __always_inline __u8 hll_rank(__u64 x)
{
    if (x == 0)
        return HLL_Q + 1;
    __u8 n = 1;
    if (!(x >> 32)) { n += 32; x <<= 32; }
    if (!(x >> 48)) { n += 16; x <<= 16; }
    if (!(x >> 56)) { n += 8; x <<= 8; }
    if (!(x >> 60)) { n += 4; x <<= 4; }
    if (!(x >> 62)) { n += 2; x <<= 2; }
    if (!(x >> 63)) { n += 1; }
    return n;
}

/* The "other ports" sketch of a protocol other than TCP and UDP in a family (layout.py,
 * OTHER_SKETCH_IDS): their ports and ICMP types have no sketches of their own. */
static __always_inline __u32 other_sketch(__u8 proto, __u32 v6)
{
    switch (proto) {
    case IPPROTO_ICMP:
        return 4;
    case IPPROTO_ICMPV6:
        return 5;
    case IPPROTO_SCTP:
        return 6 + v6;
    case IPPROTO_UDPLITE:
        return 8 + v6;
    default: /* DCCP */
        return 10 + v6;
    }
}

/* The sketch slot of key's (port, family, protocol) for this tick, cleared if it held an older
 * tick; NULL if the maps say nothing (cannot happen: arrays). */
static __always_inline struct sketch_slot *sketch_slot_of(const struct source_key *key,
                                                          __u64 now)
{
    __u32 v6 = key->family == 6;
    __u32 id;
    if (key->proto == IPPROTO_TCP || key->proto == IPPROTO_UDP) {
        __u32 port = key->port;
        struct sketch_ids *ids = sketch_of_port.lookup(&port);
        if (!ids)
            return NULL;
        __u32 class = (v6 ? 2 : 0) | (key->proto == IPPROTO_UDP ? 1 : 0);
        id = ids->id[class & 3];
        if (id == 0 || id >= NSKETCH)
            id = class;
    } else {
        id = other_sketch(key->proto, v6);
    }
    __u64 tick = now >> TICK_SHIFT;
    __u32 index = id * RING + (__u32)(tick & (RING - 1));
    struct sketch_slot *slot = sketches.lookup(&index);
    if (!slot)
        return NULL;
    __u64 seen = slot->tick;
    if (seen != tick && __sync_val_compare_and_swap(&slot->tick, seen, tick) == seen) {
        /* lost first: a loss counted by another CPU while the registers are cleared stays */
        slot->lost = 0;
        /* volatile: clang would make the loop a memset, which BPF cannot call */
        volatile __u64 *word = (volatile __u64 *)slot->reg;
        for (int i = 0; i < HLL_M / 8; i++)
            word[i] = 0;
        count(EVENT_SKETCH_TICKS);
    }
    return slot;
}

static __always_inline void sketch_add(const struct source_key *key, __u64 now)
{
#ifndef NO_SKETCH
    struct sketch_slot *slot = sketch_slot_of(key, now);
    if (!slot)
        return;
    __u64 h = address_hash(key);
    __u32 reg = (__u32)(h >> HLL_Q) & (HLL_M - 1);
    __u8 rank = hll_rank(h << HLL_P);
    if (slot->reg[reg] < rank)
        slot->reg[reg] = rank;
#endif
}

/* key's port lost a source from the table in this tick. */
static __always_inline void sketch_lost(const struct source_key *key, __u64 now)
{
    struct sketch_slot *slot = sketch_slot_of(key, now);
    if (slot && slot->lost == 0)
        __sync_fetch_and_add(&slot->lost, 1);
}

/* -- recording ----------------------------------------------------------------------------- */

/* Per 64-bit word of the key: xor it in, fold the high half into the low one, multiply. A
 * product's low bits depend only on its factors' low bits, and an IPv4 address lies in the
 * high half of its word: without the fold, keys that differ only there collide in 2^32. Each
 * step is a bijection of the state, so distinct words never collide by construction. The set
 * is the top bits, the tag the low 32 (the last fold mixes the top in). Mirrored in
 * xdp_ip_counter/table.py (key_hash); a kernel test checks that keys are found where it says. */
static __always_inline __u64 key_hash(const struct source_key *key)
{
    const __u64 *word = (const __u64 *)key;
    __u64 h = word[0] * 0x9E3779B97F4A7C15ULL;
    h ^= word[1];
    h ^= h >> 32;
    h *= 0xC2B2AE3D27D4EB4FULL;
    h ^= word[2];
    h ^= h >> 32;
    h *= 0x165667B19E3779F9ULL;
    return h ^ (h >> 32);
}

static __always_inline int same_key(const struct source_key *a, const struct source_key *b)
{
    const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;
    return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2])) == 0;
}

/* Whether a slot with this tag word is free at stamp: never used, or not seen for a window. A
 * slot stamped by another CPU after our clock read (a stamp above ours) is not free. Stamps
 * count 2^30 ns from boot in 31 bits: they wrap after 68 years of uptime. */
static __always_inline int tag_free(__u64 word, __u64 stamp, __u64 window_stamps)
{
    if (word == 0)
        return 1;
    if ((word >> 32) == 0) /* BUSY */
        return 0;
    return (word & STAMP_MASK) + window_stamps < stamp;
}

/* A new key's choice of slot is computed without branches: with a branch per way the verifier
 * walks every combination of the 16 ways' outcomes (E2BIG). OPAQUE keeps the compiler from
 * turning the arithmetic back into selects, which BPF lowers to branches. */
#define OPAQUE(x) asm volatile("" : "+r"(x))
#define BUSY_RANK (~0ULL >> 1)

/* 1 when a < b, for a and b below 2^63. */
static __always_inline __u64 below(__u64 a, __u64 b)
{
    __u64 difference = a - b;
    OPAQUE(difference); /* or the compiler makes the shift a compare */
    __u64 lt = difference >> 63;
    OPAQUE(lt); /* or it makes the masks below selects */
    return lt;
}

/* tag_free without branches: 1 or 0. */
static __always_inline __u64 free_bit(__u64 word, __u64 stamp, __u64 window_stamps)
{
    __u64 keyed = below(0, word >> 32);
    __u64 empty = below((word >> 32) | (word & 0xffffffffULL), 1); /* below() takes < 2^63 */
    return empty | (keyed & below((word & STAMP_MASK) + window_stamps, stamp));
}

/* Eviction rank of a slot that is not free (lower goes first), with the way in its low
 * WAY_BITS bits, so that the minimum names the victim: one-packet before established, seen
 * longest ago first; a BUSY slot ranks BUSY_RANK and is never chosen. */
static __always_inline __u64 evict_rank(__u64 word, __u64 w)
{
    __u64 busy = below(word >> 32, 1);
    __u64 class = ((word & ESTABLISHED) >> 31) + 1;
    OPAQUE(class);
    __u64 rank = (class << CLASS_SHIFT) | ((word & STAMP_MASK) << WAY_BITS) | w;
    return (rank & (busy - 1)) | (BUSY_RANK & (0 - busy));
}

/* How many ways an 8-bit mask of ways holds (ways_in), and the lowest of them (lowest_way; 8
 * when none). */
static __always_inline __u64 ways_in(__u64 mask)
{
    __u64 c = mask - ((mask >> 1) & 0x55);
    c = (c & 0x33) + ((c >> 2) & 0x33);
    return (c + (c >> 4)) & 0x0f;
}

static __always_inline __u64 lowest_way(__u64 mask)
{
    __u64 bit = mask & (0 - mask);
    OPAQUE(bit);
    return below(0, bit & 0xaa) | (below(0, bit & 0xcc) << 1) | (below(0, bit & 0xf0) << 2) |
           (below(bit, 1) << 3);
}

/* A key's fingerprint: 8 bits of its hash (bits 8-15, in the tag), never 0. */
static __always_inline __u64 fingerprint(__u64 hash)
{
    __u64 fp = (hash >> 8) & 0xff;
    return fp | below(fp, 1);
}

#define EVERY_BYTE 0x0101010101010101ULL

/* Whether any byte of word is fp: a byte of word ^ fp * EVERY_BYTE is 0 (the exact test). */
static __always_inline int holds_fingerprint(__u64 word, __u64 fp)
{
    __u64 x = word ^ (fp * EVERY_BYTE);
    return ((x - EVERY_BYTE) & ~x & (EVERY_BYTE << 7)) != 0;
}

/* Claim way w of set for key. Its tag word is read again here: when `free`, the way was
 * free when chosen and must still be; else it was the victim of eviction rank `rank` (its way
 * among the key's two sets in the low bits) and must still rank so. Returns 1 when that gave up
 * a live entry (its key copied to *victim), 0 when the slot was free, -1 when another CPU
 * changed the tag word since (the caller scans again). */
static __always_inline int claim(struct set *set, __u64 *fingerprints_of_set, __u64 fp,
                                 __u32 w, int free, __u64 rank, struct source_key *key,
                                 __u64 want, __u64 now, __u32 ip_len, __u64 window_stamps,
                                 __u64 lists, struct source_key *victim)
{
    __u64 stamp = (now >> STAMP_SHIFT) & STAMP_MASK;
    w &= WAYS - 1;
    __u64 seen = ((volatile __u64 *)set->tag)[w];
    int changed = free ? !tag_free(seen, stamp, window_stamps)
                       : evict_rank(seen, rank & (2 * WAYS - 1)) != rank;
    if (changed)
        return -1;
    if (__sync_val_compare_and_swap(&set->tag[w], seen, BUSY) != seen)
        return -1;
    ((volatile __u8 *)fingerprints_of_set)[w] = fp; /* before the slot is published */
    struct slot *s = &set->way[w];
    int evicted = !tag_free(seen, stamp, window_stamps);
    if (evicted)
        *victim = s->key;
    s->value.first_seen = now;
    s->value.last_seen = now;
    s->value.packets = 1;
    s->value.bytes = ip_len;
    s->key = *key;
    s->lists = lists;
#if ORDERED_STORES
    /* x86: stores become visible in program order, so a plain store publishes the slot after
     * its contents (the compiler is kept from moving them past it). The slot's line, a cache
     * miss, is then written from the store buffer while the program goes on; an atomic
     * exchange would wait for it (the flood run, 262,144 with room: 0.83 -> 0.65 of the first
     * version's added cost with only this changed). */
    asm volatile("" ::: "memory");
    *(volatile __u64 *)&set->tag[w] = want | stamp;
#else
    __sync_lock_test_and_set(&set->tag[w], want | stamp); /* a full barrier */
#endif
    return evicted;
}

#define COUNTED 0          /* counted in the key's slot */
#define COUNTED_NEW_TICK 1 /* counted in the key's slot, its first frame of this tick */
#define ABSENT 2           /* not in the set */
#define UNASKED 3          /* in the set, let through by other lists than these */

/* OUTCOME_EXCLUDED or OUTCOME_NOT_INCLUDED when the source lists (port_filter.source_lists,
 * not 0) keep key's source out; -1 when they let it through. */
static __always_inline int refused(const struct source_key *key, __u64 lists)
{
    struct source_prefix source = {.prefixlen = 8 + 128, .family = key->family};
    __builtin_memcpy(source.addr, key->addr, sizeof(source.addr));
    if ((lists & EXCLUDE_LIST) && exclude_sources.lookup(&source))
        return OUTCOME_EXCLUDED;
    if ((lists & INCLUDE_LIST) && !include_sources.lookup(&source))
        return OUTCOME_NOT_INCLUDED;
    return -1;
}

/* A primary set with ROOMY free slots or more takes a new key without the alternate's slots
 * being looked at (the emptier of the two otherwise): while a table fills to max_entries 61 %
 * of its new keys skip that work, and no set overflowed in simulation (0 of 262,144 and of
 * 1,048,576, two trials each; at 4, 3 of 1,048,576 were lost). */
#define ROOMY 5

/* What a new key learns of its sets is kept in a per-CPU map value, not on the stack: read back
 * from a map, they are values the verifier knows nothing of, so the paths that led to them (a
 * tag hash that matched but not the key, ...) merge instead of multiplying (E2BIG). */
struct scans {
    __u64 free[2];  /* per set (primary, alternate): bit w set when way w is free */
    __u64 lowest;   /* the victim when neither set has a free way: its evict_rank */
};
BPF_PERCPU_ARRAY(scan_scratch, struct scans, 1);

/* Count the frame in the key's live slot of the set (tag hash `want`), unless it was let
 * through by other source lists than `lists` and they were not `asked` in this frame
 * (UNASKED); else, if `look`, note the set's free ways. A slot of the key that has expired is free like any other: the key
 * starts a new entry in the lowest free way, maybe another one. The expired copy is not read
 * again unless the window grows back over it before it is reused: then the reader merges the
 * two copies (the key's counts over the longer window). */
static __always_inline int scan_set(struct set *set, struct source_key *key, __u64 want,
                                    __u64 now, __u32 ip_len, __u64 window_stamps, __u64 lists,
                                    int asked, int which, int look)
{
    __u64 stamp = (now >> STAMP_SHIFT) & STAMP_MASK;
#pragma unroll
    for (int w = 0; w < WAYS; w++) {
        __u64 word = set->tag[w];
        if ((word >> 32) != (want >> 32) || !same_key(&set->way[w].key, key) ||
            tag_free(word, stamp, window_stamps))
            continue;
        struct slot *s = &set->way[w];
        if (s->lists != lists) { /* the lists changed since it was let through */
            if (!asked)
                return UNASKED;
            s->lists = lists;
        }
        __u64 last = s->value.last_seen;
        if (last < now)
            s->value.last_seen = now;
        __sync_fetch_and_add(&s->value.packets, 1);
        __sync_fetch_and_add(&s->value.bytes, ip_len);
        __u64 fresh = want | ESTABLISHED | stamp;
        if (word != fresh) /* once per key and stamp; a lost race only delays it */
            __sync_val_compare_and_swap(&set->tag[w], word, fresh);
        return (last >> TICK_SHIFT) != (now >> TICK_SHIFT) ? COUNTED_NEW_TICK : COUNTED;
    }
    if (!look)
        return ABSENT;
    __u64 free = 0;
#pragma unroll
    for (int w = 0; w < WAYS; w++) {
        /* volatile: read again, so that what the matching above learnt of each word (on
         * each of its paths) does not follow it here, and every path's scan is the same one */
        __u64 word = ((volatile __u64 *)set->tag)[w];
        free |= free_bit(word, stamp, window_stamps) << w;
    }
    /* Looked up here, not on every frame: a known key never needs it. */
    __u32 zero = 0;
    struct scans *scratch = scan_scratch.lookup(&zero);
    if (scratch)
        scratch->free[which & 1] = free;
    return ABSENT;
}

static __always_inline __u64 lower_rank(__u64 a, __u64 b)
{
    __u64 lower = 0 - below(a, b); /* all ones when a < b */
    return (a & lower) | (b & ~lower);
}

/* Neither of a new key's sets has a free way: the victim is the slot of lowest evict_rank of
 * the two, the primary's ways numbered 0-7 and the alternate's 8-15 (the primary's on a tie),
 * noted in the scratch. Two chains of minima, one per set, side by side. (Unrolled, the
 * verifier walks it on every path that gets here: E2BIG.) */
static __always_inline void choose_victim(struct set *first, struct set *second)
{
    __u64 low_first = BUSY_RANK, low_second = BUSY_RANK;
#pragma clang loop unroll(disable)
    for (__u64 w = 0; w < WAYS; w++) {
        __u64 a = ((volatile __u64 *)first->tag)[w];
        __u64 b = ((volatile __u64 *)second->tag)[w];
        low_first = lower_rank(evict_rank(a, w), low_first);
        low_second = lower_rank(evict_rank(b, WAYS + w), low_second);
    }
    __u32 zero = 0;
    struct scans *scratch = scan_scratch.lookup(&zero);
    if (scratch)
        scratch->lowest = lower_rank(low_first, low_second);
}

/* The new-source budget: each CPU lets admit_per_tick new keys into the table per tick of the
 * sketches (port_filter.admit_per_tick; 0 for no limit). Past it a new key is counted in its
 * sketch only and marks its port lossy: it bounds what a flood of new sources costs a frame (no
 * slot is chosen, claimed or written), and new sources that arrive during the flood are not
 * listed until a tick after it. Per CPU, so no CPU waits for another. */
struct admission {
    __u64 tick;
    __u64 admitted;
};
BPF_PERCPU_ARRAY(admissions, struct admission, 1);

static __always_inline int admit(__u64 budget, __u64 now)
{
    if (budget == 0)
        return 1;
    __u32 zero = 0;
    struct admission *a = admissions.lookup(&zero);
    if (!a)
        return 1;
    __u64 tick = now >> TICK_SHIFT;
    if (a->tick != tick) {
        a->tick = tick;
        a->admitted = 0;
    }
    if (a->admitted >= budget)
        return 0;
    a->admitted += 1;
    return 1;
}

/* A key that is not in the table (a claim lost twice, or not admitted): in its sketch only, and
 * its port is lossy. */
static __always_inline int sketch_only(const struct source_key *key, __u64 now, __u32 outcome)
{
    sketch_add(key, now);
    sketch_lost(key, now);
    return count(outcome);
}

static __always_inline int record(struct source_key *key, __u32 ip_len, __u64 window_stamps,
                                  __u64 budget, __u64 lists)
{
    __u64 now = clock_now();
    __u64 hash = key_hash(key);
    /* The primary set: the hash's top 32 bits scaled to SETS (the top bits when SETS is a
     * power of two); the alternate: the primary xor an odd offset from the tag's bits 16-26. */
    __u32 primary = (__u32)(((hash >> 32) * SETS) >> 32);
    __u32 alternate = primary ^ (((__u32)(hash >> 16) & (BLOCK_SETS - 1)) | 1);
    struct set *first = sources.lookup(&primary);
    struct set *second = sources.lookup(&alternate);
    if (!first || !second)
        return count(OUTCOME_INSERT_FAILED);
    __u64 fp = fingerprint(hash);
    int admitted = 0; /* this key has had its share of the budget */
    int asked = 0;    /* the source lists let this key through in this frame */
    if (budget) {
        __u64 *fp_first = fingerprints.lookup(&primary);
        __u64 *fp_second = fingerprints.lookup(&alternate);
        if (fp_first && fp_second && !holds_fingerprint(*fp_first, fp) &&
            !holds_fingerprint(*fp_second, fp)) {
            /* certainly new: past the budget, the table is not touched at all */
            if (lists) {
                int kept_out = refused(key, lists);
                if (kept_out >= 0)
                    return count(kept_out);
                asked = 1;
            }
            if (!admit(budget, now))
                return sketch_only(key, now, OUTCOME_NOT_ADMITTED);
            admitted = 1;
        }
    }
    /* Load the alternate's tag line now, before the primary's is scanned: a new key's second
     * miss overlaps its first (the flood run: 1.12 -> 0.92 of the first version's added cost;
     * one test run per new source: 1.72 -> 1.05). A known key in its primary set pays a load
     * that it does not wait for. */
    __u64 early = *(volatile __u64 *)&second->tag[0];
    OPAQUE(early);
    __u64 want = (((hash & 0xffffffffULL) | 1) << 32) & ~SECONDARY;
    struct source_key victim = {};
    int outcome = -1, add = 0, lost = 0;
    /* A claim that loses a race scans once more, and then usually finds the winner's key. */
#pragma unroll
    for (int attempt = 0; attempt < 2; attempt++) {
        int found = scan_set(first, key, want, now, ip_len, window_stamps, lists, asked, 0, 1);
        if (found == COUNTED || found == COUNTED_NEW_TICK) {
            outcome = OUTCOME_RECORDED;
            add = found == COUNTED_NEW_TICK;
            break;
        }
        __u32 zero = 0;
        struct scans *scratch = scan_scratch.lookup(&zero);
        if (!scratch)
            break;
        __u64 room_first = ways_in(scratch->free[0]);
        /* The alternate's free ways are looked at only when the primary is crowded (below
         * ROOMY free ways): its tags are always scanned for the key. */
        int crowded = room_first < ROOMY;
        if (found != UNASKED)
            found = scan_set(second, key, want | SECONDARY, now, ip_len, window_stamps, lists,
                             asked, 1, crowded);
        if (found == COUNTED || found == COUNTED_NEW_TICK) {
            outcome = OUTCOME_RECORDED;
            add = found == COUNTED_NEW_TICK;
            break;
        }
        /* A new key, or a known one let through by other lists: ask the lists in force. */
        if (found == UNASKED || (lists && !asked)) {
            outcome = refused(key, lists);
            if (outcome >= 0)
                break;
            asked = 1;
            if (found == UNASKED)
                continue; /* the next scan counts it */
        }
        if (attempt == 0 && !admitted && !admit(budget, now)) {
            outcome = OUTCOME_NOT_ADMITTED;
            break;
        }
        /* the emptier set (the primary on a tie); when neither has a free way, a victim */
        __u64 free = scratch->free[0];
        int in_second = 0;
        if (crowded) {
            __u64 room_second = ways_in(scratch->free[1]);
            in_second = room_second > room_first;
            free = in_second ? scratch->free[1] : free;
        }
        __u64 w = lowest_way(free & 0xff);
        __u64 rank = 0;
        int free_way = 1;
        if (w >= WAYS) {
            choose_victim(first, second);
            rank = scratch->lowest;
            if (rank == BUSY_RANK)
                continue; /* every slot of both sets is being written */
            w = rank & (2 * WAYS - 1);
            in_second = w >= WAYS;
            free_way = 0;
        }
        struct set *set = in_second ? second : first;
        __u32 index = in_second ? alternate : primary;
        __u64 *fingerprints_of_set = fingerprints.lookup(&index);
        if (!fingerprints_of_set)
            break;
        int claimed = claim(set, fingerprints_of_set, fp, w, free_way, rank, key,
                            in_second ? want | SECONDARY : want, now, ip_len, window_stamps,
                            lists, &victim);
        if (claimed >= 0) {
            outcome = OUTCOME_RECORDED_NEW;
            add = 1;
            lost = claimed;
            break;
        }
    }
    if (outcome < 0)
        outcome = OUTCOME_INSERT_FAILED;
    if (outcome == OUTCOME_INSERT_FAILED || outcome == OUTCOME_NOT_ADMITTED)
        return sketch_only(key, now, outcome);
    if (outcome == OUTCOME_EXCLUDED || outcome == OUTCOME_NOT_INCLUDED)
        return count(outcome); /* not recorded at all: not in the sketch either */
    if (add)
        sketch_add(key, now);
    if (lost) { /* a live entry was given up for this key: the victim's port is lossy */
        sketch_lost(&victim, now);
        count(EVENT_EVICTED);
    }
    return count(outcome);
}

int xdp_ip_counter(struct xdp_md *ctx)
{
    struct source_key key = {};
    __u32 ip_len = 0;
    __u32 zero = 0;
    struct port_filter *filter = port_filter.lookup(&zero);
    if (!filter) /* cannot happen: an array */
        return count(OUTCOME_PORT_FILTERED);

    int outcome = parse_source_key(ctx, &key, &ip_len, filter->protocols);
    if (outcome != SOURCE_KEY_PARSED)
        return count(outcome);
    if (!key_in_filter(filter, &key))
        return count(OUTCOME_PORT_FILTERED);
#ifdef PARSE_ONLY
    return count(OUTCOME_RECORDED);
#else
    return record(&key, ip_len, filter->window_stamps, filter->admit_per_tick,
                  filter->source_lists);
#endif
}
