# cython: language_level=3, embedsignature=True
"""The shared allocator: a two-level segregated fit (TLSF) heap inside a region's arena.

Blocks tile the arena from its start to its end. Each starts with a 16-byte header: word 0
holds the block size (a multiple of 16) and the USED / PREV_FREE / NAMED flags, word 1 a check word
that only a live allocation carries, so ``free`` refuses addresses it never returned and
second frees. A free block also holds its free-list links after the header and its size in
its last word (the footer, for coalescing backwards). The list heads and bitmaps live in the
bookkeeping area.

Crash safety rests on one invariant: following the size words from the arena start always
lands exactly on the arena end, and a block's USED bit always tells the truth. Every change
to that chain is prepared in bytes no walk can see, then committed by one release store of
one size word. Everything else (free lists, bitmaps, footers, PREV_FREE bits, the free-byte
count) is derived, and ``rebuild`` recomputes it from the chain after a holder died mid-way.
Pointers read from shared memory are checked to lie inside the arena before being followed;
a derived structure that fails a check is rebuilt, a chain that fails one is reported.
The arena is formatted by the first allocation, so a region used raw keeps its bytes.
"""

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.string cimport memset

from mshare._layout cimport (
    MS_FL_COUNT, MS_FLAGS, MS_HEADER, MS_MIN_BLOCK, MS_NAMED, MS_PREV_FREE, MS_SL_COUNT,
    MS_SL_LOG2, MS_SMALL_LIMIT, MS_USED, ms_bookkeeping_t, ms_ctz32, ms_ctz64, ms_mix, ms_msb64,
    ms_store,
)

from mshare.errors import CorruptBookkeepingError, RegionFullError


class _Damaged(Exception):
    """A derived structure (free list, bitmap, footer) failed a check: rebuild it."""


cdef inline uint64_t *word(uint64_t addr) noexcept nogil:
    return <uint64_t *><uintptr_t>addr


cdef inline uint64_t arena_end(ms_bookkeeping_t *bk) noexcept nogil:
    cdef uint64_t usable = bk.arena_size & ~<uint64_t>15
    return bk.arena_addr + (usable if usable >= MS_MIN_BLOCK else 0)


cdef inline uint64_t check_word(ms_bookkeeping_t *bk, uint64_t header, uint64_t size) noexcept nogil:
    return ms_mix(header ^ ms_mix(size ^ bk.block_key)) | 1


cdef inline void size_class(uint64_t size, unsigned *fl, unsigned *sl) noexcept nogil:
    cdef unsigned top
    if size < MS_SMALL_LIMIT:
        fl[0] = 0
        sl[0] = <unsigned>(size >> 4)
    else:
        top = ms_msb64(size)
        fl[0] = top - (MS_SL_LOG2 + 4) + 1
        sl[0] = <unsigned>((size >> (top - MS_SL_LOG2)) & (MS_SL_COUNT - 1))


cdef inline uint64_t round_up(uint64_t value, uint64_t align) noexcept nogil:
    return (value + align - 1) & ~(align - 1)


cdef uint64_t free_size(ms_bookkeeping_t *bk, uint64_t block) except 0:
    """Size of the free block at ``block``; raises _Damaged if there is none."""
    cdef uint64_t start = bk.arena_addr, end = arena_end(bk), head, size
    if block < start or block >= end or end - block < MS_MIN_BLOCK or (block - start) & 15:
        raise _Damaged()
    head = word(block)[0]
    size = head & ~MS_FLAGS
    if head & MS_USED or size < MS_MIN_BLOCK or size > end - block:
        raise _Damaged()
    return size


cdef int list_insert(ms_bookkeeping_t *bk, uint64_t block, uint64_t size) except -1:
    cdef unsigned fl, sl
    cdef uint64_t first
    size_class(size, &fl, &sl)
    if fl >= MS_FL_COUNT:
        raise _Damaged()
    first = bk.heads[fl][sl]
    if first:
        free_size(bk, first)
        word(first)[3] = block
    word(block)[2] = first
    word(block)[3] = 0
    bk.heads[fl][sl] = block
    bk.sl_bitmap[fl] |= <uint32_t>1 << sl
    bk.fl_bitmap |= <uint64_t>1 << fl
    return 0


cdef int list_remove(ms_bookkeeping_t *bk, uint64_t block, uint64_t size) except -1:
    cdef unsigned fl, sl
    cdef uint64_t following = word(block)[2], preceding = word(block)[3]
    size_class(size, &fl, &sl)
    if fl >= MS_FL_COUNT:
        raise _Damaged()
    if preceding:
        free_size(bk, preceding)
        if word(preceding)[2] != block:
            raise _Damaged()
    elif bk.heads[fl][sl] != block:
        raise _Damaged()
    if following:
        free_size(bk, following)
        if word(following)[3] != block:
            raise _Damaged()
        word(following)[3] = preceding
    if preceding:
        word(preceding)[2] = following
    else:
        bk.heads[fl][sl] = following
    if not bk.heads[fl][sl]:
        bk.sl_bitmap[fl] &= ~(<uint32_t>1 << sl)
        if not bk.sl_bitmap[fl]:
            bk.fl_bitmap &= ~(<uint64_t>1 << fl)
    return 0


cdef uint64_t fit(uint64_t block, uint64_t size, uint64_t need, uint64_t align) noexcept nogil:
    """Payload address for ``need`` bytes (header included) in a free block, or 0.

    A payload pushed forward by alignment leaves a gap before it that must be either empty
    or a free block of its own (at least MS_MIN_BLOCK)."""
    cdef uint64_t payload = round_up(block + MS_HEADER, align)
    cdef uint64_t gap = payload - MS_HEADER - block
    if gap and gap < MS_MIN_BLOCK:
        payload = round_up(block + MS_HEADER + MS_MIN_BLOCK, align)
        gap = payload - MS_HEADER - block
    return payload if gap + need <= size else 0


cdef uint64_t find(ms_bookkeeping_t *bk, uint64_t need, uint64_t align, uint64_t *block) except? 0:
    """Pick a free block for ``need`` bytes; return the payload address, or 0 when none fits.

    The fast path rounds the request up to the next class, so the head of the first
    non-empty list at or above it always fits: two bit scans. Only when that finds nothing
    (memory is tight) are the lists that may hold a fitting block walked one by one, so an
    allocation fails only if no free block can hold it."""
    cdef unsigned fl, sl
    cdef uint64_t search = need if align <= MS_HEADER else need + align + MS_MIN_BLOCK
    cdef uint64_t map_, candidate, size, payload, steps = 0
    cdef uint64_t limit = (arena_end(bk) - bk.arena_addr) // MS_MIN_BLOCK + 1
    if search >= MS_SMALL_LIMIT:
        search += (<uint64_t>1 << (ms_msb64(search) - MS_SL_LOG2)) - 1
    size_class(search, &fl, &sl)
    if fl < MS_FL_COUNT:
        map_ = bk.sl_bitmap[fl] & (~<uint32_t>0 << sl)
        if not map_ and fl + 1 < MS_FL_COUNT:
            map_ = bk.fl_bitmap & (~<uint64_t>0 << (fl + 1))
            if map_:
                fl = ms_ctz64(map_)
                map_ = bk.sl_bitmap[fl]
                if not map_:
                    raise _Damaged()
        if map_:
            candidate = bk.heads[fl][ms_ctz32(<uint32_t>map_)]
            payload = fit(candidate, free_size(bk, candidate), need, align)
            if not payload:
                raise _Damaged()
            block[0] = candidate
            return payload
    size_class(need, &fl, &sl)
    while fl < MS_FL_COUNT:
        map_ = bk.sl_bitmap[fl] & (~<uint32_t>0 << sl)
        while map_:
            candidate = bk.heads[fl][ms_ctz32(<uint32_t>map_)]
            while candidate:
                steps += 1
                if steps > limit:
                    raise _Damaged()
                size = free_size(bk, candidate)
                payload = fit(candidate, size, need, align)
                if payload:
                    block[0] = candidate
                    return payload
                candidate = word(candidate)[2]
            map_ &= map_ - 1
        fl += 1
        sl = 0
    return 0


cdef int carve(ms_bookkeeping_t *bk, uint64_t block, uint64_t payload, uint64_t need,
               uint64_t *intent, uint64_t flags, object name) except -1:
    """Turn part of a free block, already off its list, into the used block at ``payload - 16``."""
    cdef uint64_t head = word(block)[0]
    cdef uint64_t size = head & ~MS_FLAGS
    cdef uint64_t used = payload - MS_HEADER
    cdef uint64_t gap = used - block
    cdef uint64_t rest = size - gap - need
    cdef uint64_t after, end = arena_end(bk)
    if rest < MS_MIN_BLOCK:
        need += rest
        rest = 0
    # Prepared inside the free block, invisible to a walk until the commit below.
    if rest:
        word(used + need)[0] = rest
        word(used + need)[1] = 0
        word(used + need + rest - 8)[0] = rest
    word(used)[1] = check_word(bk, used, need)
    if gap:
        word(used)[0] = need | flags | MS_PREV_FREE
        word(used - 8)[0] = gap
    intent[0] = payload
    if gap:
        ms_store(&word(block)[0], gap | (head & MS_PREV_FREE))
    else:
        ms_store(&word(block)[0], need | flags | (head & MS_PREV_FREE))
    bk.free_bytes -= need
    try:
        if gap:
            list_insert(bk, block, gap)
        if rest:
            list_insert(bk, used + need, rest)
        else:
            after = used + need
            if after < end:
                ms_store(&word(after)[0], word(after)[0] & ~MS_PREV_FREE)
    except _Damaged:
        rebuild(bk, name)
    return 0


cdef int format_arena(ms_bookkeeping_t *bk) except -1:
    """Lay the first block header over the whole arena, on the first allocation only, so a
    region used raw never finds allocator data in its bytes. The flag is the commit."""
    cdef uint64_t start = bk.arena_addr, end = arena_end(bk)
    bk.fl_bitmap = 0
    memset(bk.sl_bitmap, 0, sizeof(bk.sl_bitmap))
    memset(bk.heads, 0, sizeof(bk.heads))
    bk.free_bytes = end - start
    if end > start:
        word(start)[0] = end - start
        word(start)[1] = 0
        word(end - 8)[0] = end - start
        list_insert(bk, start, end - start)
    ms_store(&bk.formatted, 1)
    return 0


cdef uint64_t allocate(ms_bookkeeping_t *bk, uint64_t nbytes, uint64_t align,
                       uint64_t *intent, bint named, object name) except 0:
    """Allocate ``nbytes`` at a multiple of ``align``; ``intent`` receives the payload
    address just before the commit, so a repair can roll an interrupted allocation back.
    A ``named`` block is flagged so that only ``release(named=True)`` frees it."""
    cdef uint64_t block = 0, payload = 0, need = 0
    cdef int attempt
    if not bk.formatted:
        format_arena(bk)
    if nbytes <= bk.arena_size:
        need = max(MS_MIN_BLOCK, round_up(nbytes + MS_HEADER, 16))
        for attempt in range(2):
            try:
                payload = find(bk, need, align, &block)
                if payload:
                    list_remove(bk, block, word(block)[0] & ~MS_FLAGS)
                break
            except _Damaged:
                if attempt:
                    raise CorruptBookkeepingError(
                        "the allocator's free lists are damaged again right after a rebuild",
                        name) from None
                rebuild(bk, name)
    if not payload:
        raise RegionFullError(
            f"cannot allocate {nbytes} bytes aligned to {align}: {bk.free_bytes} bytes free "
            f"in the region's arena of {bk.arena_size} bytes, but no free block is large enough",
            name)
    carve(bk, block, payload, need, intent, MS_USED | (MS_NAMED if named else 0), name)
    return payload


cdef uint64_t used_block(ms_bookkeeping_t *bk, uint64_t payload) noexcept:
    """Header address of the live allocation at ``payload``, or 0 if there is none."""
    cdef uint64_t start = bk.arena_addr, end = arena_end(bk)
    cdef uint64_t block = payload - MS_HEADER, head, size
    if not bk.formatted or payload < start + MS_HEADER or payload >= end or (block - start) & 15:
        return 0
    if end - block < MS_MIN_BLOCK:
        return 0
    head = word(block)[0]
    size = head & ~MS_FLAGS
    if not head & MS_USED or size < MS_MIN_BLOCK or size > end - block:
        return 0
    if word(block)[1] != check_word(bk, block, size):
        return 0
    return block


cdef uint64_t live_block(ms_bookkeeping_t *bk, uint64_t payload) noexcept:
    """Like ``used_block``, but also walks the chain to prove the header is reachable.

    A process killed just before committing an aligned allocation leaves a well-formed
    header inside a free block; only a walk tells such a phantom from a live block. Repair
    uses this before rolling anything back, and scrubs the phantom's check word."""
    cdef uint64_t block = used_block(bk, payload), walk = bk.arena_addr, size
    if not block:
        return 0
    while walk < block:
        size = word(walk)[0] & ~MS_FLAGS
        if size < MS_MIN_BLOCK:
            return 0
        walk += size
    if walk != block:
        word(block)[1] = 0
        return 0
    return block


cdef int coalesce(ms_bookkeeping_t *bk, uint64_t block) except -1:
    """Merge a just-freed block with free neighbours and put the result on its list."""
    cdef uint64_t start = bk.arena_addr, end = arena_end(bk)
    cdef uint64_t head = word(block)[0]
    cdef uint64_t size = head & ~MS_FLAGS
    cdef uint64_t neighbour, other
    neighbour = block + size
    if neighbour < end and not word(neighbour)[0] & MS_USED:
        other = free_size(bk, neighbour)
        list_remove(bk, neighbour, other)
        size += other
        ms_store(&word(block)[0], size | (head & MS_PREV_FREE))
    if head & MS_PREV_FREE:
        if block - start < MS_MIN_BLOCK:
            raise _Damaged()
        other = word(block - 8)[0]
        if other < MS_MIN_BLOCK or other > block - start or free_size(bk, block - other) != other:
            raise _Damaged()
        block -= other
        list_remove(bk, block, other)
        size += other
        ms_store(&word(block)[0], size | (word(block)[0] & MS_PREV_FREE))
    word(block + size - 8)[0] = size
    list_insert(bk, block, size)
    neighbour = block + size
    if neighbour < end:
        ms_store(&word(neighbour)[0], word(neighbour)[0] | MS_PREV_FREE)
    return 0


cdef int release(ms_bookkeeping_t *bk, uint64_t payload, bint named, object name) except -1:
    cdef uint64_t block = used_block(bk, payload)
    cdef uint64_t head, size
    if not block:
        raise ValueError(
            f"address 0x{payload:x} is not a live allocation of this region: it was never "
            f"returned by alloc(), or it was already freed")
    head = word(block)[0]
    if bool(head & MS_NAMED) != named:
        raise ValueError(f"0x{payload:x} belongs to a named object; delete it by name"
                         if not named else f"0x{payload:x} is not a named object's block")
    size = head & ~MS_FLAGS
    ms_store(&word(block)[0], size | (head & MS_PREV_FREE))
    # After the commit, so a repair that finds the block still USED can finish this free.
    word(block)[1] = 0
    bk.free_bytes += size
    try:
        coalesce(bk, block)
    except _Damaged:
        rebuild(bk, name)
    return 0


cdef corrupt(uint64_t block, uint64_t head, object name):
    return CorruptBookkeepingError(
        f"allocator block header at 0x{block:x} is damaged (size word 0x{head:x}): "
        f"something wrote over the allocator's data inside the region", name)


cdef int rebuild(ms_bookkeeping_t *bk, object name) except -1:
    """Recompute every derived structure from the block chain, merging adjacent free blocks."""
    cdef uint64_t end = arena_end(bk), block = bk.arena_addr
    cdef uint64_t head, want, size, run = 0, run_size = 0
    cdef bint previous_free = False
    if not bk.formatted:
        return 0  # the next allocation formats the arena from scratch
    bk.fl_bitmap = 0
    memset(bk.sl_bitmap, 0, sizeof(bk.sl_bitmap))
    memset(bk.heads, 0, sizeof(bk.heads))
    bk.free_bytes = 0
    while block < end:
        head = word(block)[0]
        size = head & ~MS_FLAGS
        if size < MS_MIN_BLOCK or size & 15 or size > end - block:
            raise corrupt(block, head, name)
        if head & MS_USED:
            if word(block)[1] != check_word(bk, block, size):
                raise corrupt(block, head, name)
            if run:
                word(run + run_size - 8)[0] = run_size
                list_insert(bk, run, run_size)
                bk.free_bytes += run_size
                run = 0
            want = size | (head & (MS_USED | MS_NAMED)) | (MS_PREV_FREE if previous_free else 0)
            if head != want:
                ms_store(&word(block)[0], want)
            previous_free = False
        else:
            if run:
                run_size += size
                ms_store(&word(run)[0], run_size)
            else:
                run, run_size = block, size
                ms_store(&word(run)[0], run_size)
            previous_free = True
        block += size
    if run:
        word(run + run_size - 8)[0] = run_size
        list_insert(bk, run, run_size)
        bk.free_bytes += run_size
    return 0


cdef dict verify_allocator(ms_bookkeeping_t *bk, object name):
    """Check every invariant, derived ones included; return statistics of the heap."""
    cdef uint64_t end = arena_end(bk), block = bk.arena_addr, head, size, candidate, back
    cdef uint64_t free_bytes = 0, free_blocks = 0, used_blocks = 0, named_blocks = 0
    cdef uint64_t largest = 0, listed = 0
    cdef unsigned fl, sl, want_fl, want_sl
    cdef bint previous_free = False
    if not bk.formatted:
        # Nothing written in the arena yet: it counts as one free block.
        if bk.fl_bitmap:
            raise CorruptBookkeepingError("free lists of an unformatted arena are not empty", name)
        return {"arena_bytes": end - bk.arena_addr, "free_bytes": end - bk.arena_addr,
                "free_blocks": int(end > bk.arena_addr), "used_blocks": 0, "named_blocks": 0,
                "largest_free": end - bk.arena_addr}
    while block < end:
        head = word(block)[0]
        size = head & ~MS_FLAGS
        if size < MS_MIN_BLOCK or size & 15 or size > end - block:
            raise corrupt(block, head, name)
        if bool(head & MS_PREV_FREE) != previous_free:
            raise CorruptBookkeepingError(f"PREV_FREE flag wrong at 0x{block:x}", name)
        if head & MS_USED:
            if word(block)[1] != check_word(bk, block, size):
                raise corrupt(block, head, name)
            used_blocks += 1
            named_blocks += bool(head & MS_NAMED)
            previous_free = False
        else:
            if previous_free:
                raise CorruptBookkeepingError(f"free block at 0x{block:x} not merged", name)
            if word(block + size - 8)[0] != size:
                raise CorruptBookkeepingError(f"footer wrong in block 0x{block:x}", name)
            free_blocks += 1
            free_bytes += size
            largest = max(largest, size)
            previous_free = True
        block += size
    for fl in range(MS_FL_COUNT):
        if bool(bk.fl_bitmap >> fl & 1) != bool(bk.sl_bitmap[fl]):
            raise CorruptBookkeepingError(f"first-level bitmap wrong for class {fl}", name)
        for sl in range(MS_SL_COUNT):
            candidate = bk.heads[fl][sl]
            if bool(bk.sl_bitmap[fl] >> sl & 1) != bool(candidate):
                raise CorruptBookkeepingError(f"bitmap wrong for class {fl}.{sl}", name)
            back = 0
            while candidate:
                listed += 1
                if listed > free_blocks:
                    raise CorruptBookkeepingError("free lists hold more blocks than the heap", name)
                try:
                    size = free_size(bk, candidate)
                except _Damaged:
                    raise CorruptBookkeepingError(
                        f"free list {fl}.{sl} holds a bad block 0x{candidate:x}", name) from None
                size_class(size, &want_fl, &want_sl)
                if (want_fl, want_sl) != (fl, sl) or word(candidate)[3] != back:
                    raise CorruptBookkeepingError(f"free list {fl}.{sl} is inconsistent", name)
                back = candidate
                candidate = word(candidate)[2]
    if listed != free_blocks or free_bytes != bk.free_bytes:
        raise CorruptBookkeepingError("free lists or free-byte count disagree with the heap", name)
    return {
        "arena_bytes": end - bk.arena_addr,
        "free_bytes": free_bytes,
        "free_blocks": free_blocks,
        "used_blocks": used_blocks,
        "named_blocks": named_blocks,
        "largest_free": largest,
    }
