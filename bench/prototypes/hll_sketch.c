/* Prototype for issue 12 (not the product): a sliding-window HyperLogLog of source addresses,
 * one per (family, protocol, port) sketch, updated per frame after the product's own parse
 * (bpf/source_key.h) and port filter. Measured by bench/sketch_cost.py; the estimator is
 * bench/prototypes/hll.py, which mirrors the hash below bit for bit (a test checks it).
 *
 * Sketch: HLL_P index bits (m = 2^HLL_P one-byte registers). A register holds the rank
 * (leading zeros + 1) of the hash's remaining 64 - HLL_P bits, at most 65 - HLL_P.
 *
 * Window: one sketch per 10 s tick of clock_now() (the product's jiffies clock), in a ring of
 * RING slots per sketch (RING = window / 10 + 1: the current tick and the window's full ticks).
 * A slot remembers its tick; the first frame of a new tick on a CPU clears the slot it reuses
 * (2^HLL_P / 8 stores, once per tick, CPU and sketch), so the kernel needs no help from
 * userspace to forget, and a slot whose tick is outside the window is simply not read.
 * Per-CPU array: no atomics, no shared cache lines; the union over CPUs and ticks is the
 * register-wise max, taken by userspace.
 *
 * Ports to sketches: sketch_of_port[port].id[class], class = (family == 6) * 2 + (proto == UDP).
 * 0 sends the port to the "other ports" sketch of its class (sketches 0..3); userspace gives a
 * watched port a sketch of its own (4 .. NSKETCH - 1) while there are sketches left. So memory
 * is NSKETCH * RING * (8 + 2^HLL_P) bytes per CPU whatever the port filter says.
 *
 * -D switches: HLL_P (default 14), RING (7), NSKETCH (16), TICK_NS (10 s), CLOCK_JIFFY_ZERO and
 * CLOCK_TICK_NS (required, as for the product), HASH_SEED (0). Benchmark and test switches:
 *   NO_SKETCH     parse, filter, count: no sketch update (the parse-only baseline, as ours)
 *   VARY_SOURCE   xor a per-CPU frame number into the source before hashing: a distinct source
 *                 in every frame of one BPF_PROG_TEST_RUN with repeat
 *   ALWAYS_RESET  clear the slot on every frame (what one tick change costs)
 *   HASH_PROBE    store the last hash in hash_probe[0] (the hash test)
 */
#include <uapi/linux/bpf.h>
#include "source_key.h" /* the product's key, outcomes, port filter and parse */

#ifndef HLL_P
#define HLL_P 14
#endif
#define HLL_M (1 << HLL_P)
#define HLL_Q (64 - HLL_P)
#ifndef RING
#define RING 7
#endif
#ifndef NSKETCH
#define NSKETCH 16
#endif
#define NOTHER 4 /* "other ports" sketches: one per class */
#ifndef TICK_NS
#define TICK_NS 10000000000ULL
#endif
#ifndef HASH_SEED
#define HASH_SEED 0ULL
#endif
#if !defined(CLOCK_JIFFY_ZERO) || !defined(CLOCK_TICK_NS)
#error "CLOCK_JIFFY_ZERO and CLOCK_TICK_NS must be defined (xdp_ip_counter.clock calibrates them)"
#endif

struct hll_slot {
    __u64 tick; /* the 10 s tick these registers are from */
    __u8 reg[HLL_M];
};

struct sketch_ids {
    __u8 id[4]; /* by class; 0 = the class's "other ports" sketch */
};

/* The product's outcomes (source_key.h), and one more counter: slots cleared for a new tick. */
#define SLOT_RESETS OUTCOME_MAX

BPF_ARRAY(port_filter, struct port_filter, 1);
BPF_ARRAY(sketch_of_port, struct sketch_ids, 65536);
BPF_PERCPU_ARRAY(sketches, struct hll_slot, NSKETCH * RING);
BPF_PERCPU_ARRAY(stats, __u64, OUTCOME_MAX + 1);
#ifdef VARY_SOURCE
BPF_PERCPU_ARRAY(frame_number, __u64, 1);
#endif
#ifdef HASH_PROBE
BPF_ARRAY(hash_probe, __u64, 1);
#endif

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

/* The source address as the product's key holds it (IPv4-mapped for IPv4), read as two
 * little-endian 64-bit words: one multiply, then murmur3's fmix64 (xor-shifts and multiplies,
 * no rotates). Mirrored in bench/prototypes/hll.py (address_hash). */
static __always_inline __u64 address_hash(__u64 lo, __u64 hi)
{
    __u64 h = ((lo ^ HASH_SEED) * 0x9E3779B97F4A7C15ULL) ^ hi;
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDULL;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ULL;
    h ^= h >> 33;
    return h;
}

/* Leading zeros + 1 of x (the hash shifted left by HLL_P), HLL_Q + 1 when x is 0. BPF has no
 * count-leading-zeros instruction: a six-step binary search. */
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

static __always_inline void clear_slot(struct hll_slot *slot, __u64 tick)
{
    /* volatile: clang would make the loop a memset, which BPF cannot call */
    volatile __u64 *word = (volatile __u64 *)slot->reg;
    for (int i = 0; i < HLL_M / 8; i++)
        word[i] = 0;
    slot->tick = tick;
}

static __always_inline void sketch_update(__u64 lo, __u64 hi, int is_v6, __u8 proto, __u16 port)
{
    __u32 port_index = port;
    struct sketch_ids *ids = sketch_of_port.lookup(&port_index);
    if (!ids)
        return;
    __u32 class = (is_v6 ? 2 : 0) | (proto == IPPROTO_UDP ? 1 : 0);
    __u32 sketch = ids->id[class & 3];
    if (sketch == 0 || sketch >= NSKETCH)
        sketch = class;
    __u64 tick = (bpf_jiffies64() - CLOCK_JIFFY_ZERO) * CLOCK_TICK_NS / TICK_NS;
    __u32 index = sketch * RING + (__u32)(tick % RING);
    struct hll_slot *slot = sketches.lookup(&index);
    if (!slot)
        return;
#ifdef ALWAYS_RESET
    clear_slot(slot, tick);
    count(SLOT_RESETS);
#else
    if (slot->tick != tick) {
        clear_slot(slot, tick);
        count(SLOT_RESETS);
    }
#endif
    __u64 h = address_hash(lo, hi);
#ifdef HASH_PROBE
    __u32 zero = 0;
    __u64 *probe = hash_probe.lookup(&zero);
    if (probe)
        *probe = h;
#endif
    __u32 reg = (__u32)(h >> HLL_Q) & (HLL_M - 1);
    __u8 rank = hll_rank(h << HLL_P);
    if (slot->reg[reg] < rank)
        slot->reg[reg] = rank;
}

int hll_sketch(struct xdp_md *ctx)
{
    struct source_key key = {};
    __u32 ip_len = 0;
    __u64 lo, hi;

    int outcome = parse_source_key(ctx, &key, &ip_len);
    if (outcome != SOURCE_KEY_PARSED)
        return count(outcome);
    if (!port_watched(key.port))
        return count(OUTCOME_PORT_FILTERED);
    /* The address as two little-endian 64-bit words (for IPv4: ::ffff:a.b.c.d). */
    __builtin_memcpy(&lo, &key.addr[0], 8);
    __builtin_memcpy(&hi, &key.addr[8], 8);

#ifdef VARY_SOURCE
    __u32 zero_index = 0;
    __u64 *number = frame_number.lookup(&zero_index);
    if (number) {
        hi ^= *number << 32;
        *number += 1;
    }
#endif
#ifndef NO_SKETCH
    sketch_update(lo, hi, key.family == 6, key.proto, key.port);
#endif
    return count(OUTCOME_RECORDED);
}
