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

Every byte here may be rewritten at any moment by another process that may write the region.
So each word is read once (``peek``) into a local, the local is checked against the private
``Arena`` bounds before it decides anything, and every store (``poke``, ``commit``) checks its
address against those bounds at the store. Walks are bounded by the number of blocks the
arena can hold. A derived structure that fails a check is rebuilt; a chain that fails one is
reported as ``CorruptBookkeepingError``. The arena is formatted by the first allocation, so
a region used raw keeps its bytes.
"""

from libc.stdint cimport uint32_t, uint64_t, uintptr_t
from libc.string cimport memset

from mshare._layout cimport (
    MS_FL_COUNT, MS_FLAGS, MS_HEADER, MS_MIN_BLOCK, MS_NAMED, MS_PREV_FREE, MS_SL_COUNT,
    MS_SL_LOG2, MS_SMALL_LIMIT, MS_USED, ms_bookkeeping_t, ms_ctz32, ms_ctz64, ms_mix, ms_msb64,
    ms_peek, ms_peek32, ms_store,
)

from mshare.errors import CorruptBookkeepingError, RegionFullError

class _Damaged(Exception):
    """A word failed a check: rebuild the derived structures, or report the chain."""


cdef inline uint64_t *word(uint64_t addr) noexcept nogil:
    return <uint64_t *><uintptr_t>addr


cdef inline bint inside(Arena *arena, uint64_t addr) noexcept nogil:
    """Whether the aligned word at ``addr`` lies wholly inside the arena."""
    return arena.start <= addr < arena.end and arena.end - addr >= 8 and not addr & 7


cdef inline uint64_t peek(Arena *arena, uint64_t addr) except? 0xdeadbeefdeadbeef:
    if not inside(arena, addr):
        raise _Damaged()
    return ms_peek(word(addr))


cdef inline int poke(Arena *arena, uint64_t addr, uint64_t value) except -1:
    if not inside(arena, addr):
        raise _Damaged()
    word(addr)[0] = value
    return 0


cdef inline int commit(Arena *arena, uint64_t addr, uint64_t value) except -1:
    """A checked release store: the commit point of a change to the block chain."""
    if not inside(arena, addr):
        raise _Damaged()
    ms_store(word(addr), value)
    return 0


cdef inline uint64_t check_word(Arena *arena, uint64_t header, uint64_t size) noexcept nogil:
    return ms_mix(header ^ ms_mix(size ^ arena.key)) | 1


cdef inline uint64_t block_limit(Arena *arena) noexcept nogil:
    """More steps than any walk over honest lists can take: a longer one is a cycle."""
    return (arena.end - arena.start) // MS_MIN_BLOCK + 1


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


cdef inline uint64_t *head_of(Arena *arena, unsigned fl, unsigned sl) except NULL:
    if fl >= MS_FL_COUNT or sl >= MS_SL_COUNT:
        raise _Damaged()
    return &arena.bk.heads[fl][sl]


cdef uint64_t free_block(Arena *arena, uint64_t block, uint64_t *head) except 0:
    """Size of the free block at ``block`` (its size word into ``head``); _Damaged if none."""
    cdef uint64_t value, size
    if block < arena.start or block >= arena.end or (block - arena.start) & 15:
        raise _Damaged()
    if arena.end - block < MS_MIN_BLOCK:
        raise _Damaged()
    value = peek(arena, block)
    size = value & ~MS_FLAGS
    if value & MS_USED or size < MS_MIN_BLOCK or size > arena.end - block:
        raise _Damaged()
    head[0] = value
    return size


cdef int list_insert(Arena *arena, uint64_t block, uint64_t size) except -1:
    cdef ms_bookkeeping_t *bk = arena.bk
    cdef unsigned fl, sl
    cdef uint64_t first, ignored
    cdef uint64_t *list_head
    size_class(size, &fl, &sl)
    list_head = head_of(arena, fl, sl)
    first = ms_peek(list_head)
    if first:
        free_block(arena, first, &ignored)
        poke(arena, first + 24, block)
    poke(arena, block + 16, first)
    poke(arena, block + 24, 0)
    list_head[0] = block
    bk.sl_bitmap[fl] = ms_peek32(&bk.sl_bitmap[fl]) | <uint32_t>1 << sl
    bk.fl_bitmap = ms_peek(&bk.fl_bitmap) | <uint64_t>1 << fl
    return 0


cdef int list_remove(Arena *arena, uint64_t block, uint64_t size) except -1:
    cdef ms_bookkeeping_t *bk = arena.bk
    cdef unsigned fl, sl
    cdef uint64_t following = peek(arena, block + 16), preceding = peek(arena, block + 24)
    cdef uint64_t ignored, remaining
    cdef uint64_t *list_head
    size_class(size, &fl, &sl)
    list_head = head_of(arena, fl, sl)
    if preceding:
        free_block(arena, preceding, &ignored)
        if peek(arena, preceding + 16) != block:
            raise _Damaged()
    elif ms_peek(list_head) != block:
        raise _Damaged()
    if following:
        free_block(arena, following, &ignored)
        if peek(arena, following + 24) != block:
            raise _Damaged()
        poke(arena, following + 24, preceding)
    if preceding:
        poke(arena, preceding + 16, following)
    else:
        list_head[0] = following
        if not following:
            remaining = ms_peek32(&bk.sl_bitmap[fl]) & ~(<uint32_t>1 << sl)
            bk.sl_bitmap[fl] = <uint32_t>remaining
            if not remaining:
                bk.fl_bitmap = ms_peek(&bk.fl_bitmap) & ~(<uint64_t>1 << fl)
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
    return payload if gap <= size and need <= size - gap else 0


cdef uint64_t find(Arena *arena, uint64_t need, uint64_t align, uint64_t *block,
                   uint64_t *size, uint64_t *head) except? 0:
    """Pick a free block for ``need`` bytes; return the payload address, or 0 when none fits.

    The fast path rounds the request up to the next class, so the head of the first
    non-empty list at or above it always fits: two bit scans. Only when that finds nothing
    (memory is tight) are the lists that may hold a fitting block walked one by one, so an
    allocation fails only if no free block can hold it."""
    cdef ms_bookkeeping_t *bk = arena.bk
    cdef unsigned fl, sl
    cdef uint64_t search = need if align <= MS_HEADER else need + align + MS_MIN_BLOCK
    cdef uint64_t map_, candidate, payload, steps = 0, limit = block_limit(arena)
    if search >= MS_SMALL_LIMIT:
        search += (<uint64_t>1 << (ms_msb64(search) - MS_SL_LOG2)) - 1
    size_class(search, &fl, &sl)
    if fl < MS_FL_COUNT:
        map_ = ms_peek32(&bk.sl_bitmap[fl]) & (~<uint32_t>0 << sl)
        if not map_ and fl + 1 < MS_FL_COUNT:
            map_ = ms_peek(&bk.fl_bitmap) & (~<uint64_t>0 << (fl + 1))
            if map_:
                fl = ms_ctz64(map_)
                map_ = ms_peek32(&bk.sl_bitmap[fl])
                if not map_:
                    raise _Damaged()
        if map_:
            candidate = ms_peek(head_of(arena, fl, ms_ctz32(<uint32_t>map_)))
            size[0] = free_block(arena, candidate, head)
            payload = fit(candidate, size[0], need, align)
            if not payload:
                raise _Damaged()
            block[0] = candidate
            return payload
    size_class(need, &fl, &sl)
    while fl < MS_FL_COUNT:
        map_ = ms_peek32(&bk.sl_bitmap[fl]) & (~<uint32_t>0 << sl)
        while map_:
            candidate = ms_peek(head_of(arena, fl, ms_ctz32(<uint32_t>map_)))
            while candidate:
                steps += 1
                if steps > limit:
                    raise _Damaged()
                size[0] = free_block(arena, candidate, head)
                payload = fit(candidate, size[0], need, align)
                if payload:
                    block[0] = candidate
                    return payload
                candidate = peek(arena, candidate + 16)
            map_ &= map_ - 1
        fl += 1
        sl = 0
    return 0


cdef int carve(Arena *arena, uint64_t block, uint64_t size, uint64_t head, uint64_t payload,
               uint64_t need, uint64_t *intent, uint64_t flags, object name) except -1:
    """Turn part of a free block, already off its list, into the used block at ``payload - 16``.

    ``size`` and ``head`` are the block's size word as read once and checked by ``find``."""
    cdef uint64_t used = payload - MS_HEADER
    cdef uint64_t gap = used - block
    cdef uint64_t rest = size - gap - need
    cdef uint64_t after
    if rest < MS_MIN_BLOCK:
        need += rest
        rest = 0
    # Prepared inside the free block, invisible to a walk until the commit below.
    if rest:
        poke(arena, used + need, rest)
        poke(arena, used + need + 8, 0)
        poke(arena, used + need + rest - 8, rest)
    poke(arena, used + 8, check_word(arena, used, need))
    if gap:
        poke(arena, used, need | flags | MS_PREV_FREE)
        poke(arena, used - 8, gap)
    intent[0] = payload
    if gap:
        commit(arena, block, gap | (head & MS_PREV_FREE))
    else:
        commit(arena, block, need | flags | (head & MS_PREV_FREE))
    arena.bk.free_bytes = ms_peek(&arena.bk.free_bytes) - need
    try:
        if gap:
            list_insert(arena, block, gap)
        if rest:
            list_insert(arena, used + need, rest)
        else:
            after = used + need
            if after < arena.end:
                commit(arena, after, peek(arena, after) & ~MS_PREV_FREE)
    except _Damaged:
        rebuild(arena, name)
    return 0


cdef int format_arena(Arena *arena) except -1:
    """Lay the first block header over the whole arena, on the first allocation only, so a
    region used raw never finds allocator data in its bytes. The flag is the commit."""
    cdef ms_bookkeeping_t *bk = arena.bk
    cdef uint64_t start = arena.start, end = arena.end
    bk.fl_bitmap = 0
    memset(bk.sl_bitmap, 0, sizeof(bk.sl_bitmap))
    memset(bk.heads, 0, sizeof(bk.heads))
    bk.free_bytes = end - start
    if end > start:
        poke(arena, start, end - start)
        poke(arena, start + 8, 0)
        poke(arena, end - 8, end - start)
        list_insert(arena, start, end - start)
    ms_store(&bk.formatted, 1)
    return 0


cdef uint64_t allocate(Arena *arena, uint64_t nbytes, uint64_t align, uint64_t *intent,
                       bint named, object name) except 0:
    """Allocate ``nbytes`` at a multiple of ``align``; ``intent`` receives the payload
    address just before the commit, so a repair can roll an interrupted allocation back.
    A ``named`` block is flagged so that only ``release(named=True)`` frees it."""
    cdef uint64_t block = 0, size = 0, head = 0, payload = 0, need = 0
    cdef int attempt
    try:
        if not ms_peek(&arena.bk.formatted):
            format_arena(arena)
        if nbytes <= arena.end - arena.start:
            need = max(MS_MIN_BLOCK, round_up(nbytes + MS_HEADER, 16))
            for attempt in range(2):
                try:
                    payload = find(arena, need, align, &block, &size, &head)
                    if payload:
                        list_remove(arena, block, size)
                    break
                except _Damaged:
                    if attempt:
                        raise CorruptBookkeepingError(
                            "the allocator's free lists are damaged again right after a rebuild",
                            name) from None
                    rebuild(arena, name)
        if not payload:
            raise RegionFullError(
                f"cannot allocate {nbytes} bytes aligned to {align}: "
                f"{ms_peek(&arena.bk.free_bytes)} bytes free in the region's arena of "
                f"{arena.size} bytes, but no free block is large enough", name)
        carve(arena, block, size, head, payload, need, intent,
              MS_USED | (MS_NAMED if named else 0), name)
    except _Damaged:
        raise CorruptBookkeepingError("the allocator's bookkeeping points outside its arena",
                                      name) from None
    if payload < arena.start + MS_HEADER or payload > arena.end or nbytes > arena.end - payload:
        raise CorruptBookkeepingError(
            f"the allocator picked 0x{payload:x}+{nbytes}, outside its arena", name)
    return payload


cdef uint64_t used_block(Arena *arena, uint64_t payload, uint64_t *head) noexcept:
    """Header address of the live allocation at ``payload`` (its size word into ``head``),
    or 0 if there is none."""
    cdef uint64_t block = payload - MS_HEADER, value, size
    if (not ms_peek(&arena.bk.formatted) or payload < arena.start + MS_HEADER
            or payload >= arena.end or (block - arena.start) & 15
            or arena.end - block < MS_MIN_BLOCK):
        return 0
    value = ms_peek(word(block))
    size = value & ~MS_FLAGS
    if not value & MS_USED or size < MS_MIN_BLOCK or size > arena.end - block:
        return 0
    if ms_peek(word(block + 8)) != check_word(arena, block, size):
        return 0
    head[0] = value
    return block


cdef uint64_t live_block(Arena *arena, uint64_t payload) noexcept:
    """Like ``used_block``, but also walks the chain to prove the header is reachable.

    A process killed just before committing an aligned allocation leaves a well-formed
    header inside a free block; only a walk tells such a phantom from a live block. Repair
    uses this before rolling anything back, and scrubs the phantom's check word."""
    cdef uint64_t head, size, walk = arena.start
    cdef uint64_t block = used_block(arena, payload, &head)
    if not block:
        return 0
    while walk < block:
        size = ms_peek(word(walk)) & ~MS_FLAGS
        if size < MS_MIN_BLOCK or size & 15 or size > arena.end - walk:
            return 0
        walk += size
    if walk != block:
        word(block + 8)[0] = 0
        return 0
    return block


cdef int coalesce(Arena *arena, uint64_t block, uint64_t size, uint64_t head) except -1:
    """Merge a just-freed block with free neighbours and put the result on its list."""
    cdef uint64_t start = arena.start, end = arena.end
    cdef uint64_t neighbour = block + size, value, other, previous_head
    if neighbour < end:
        value = peek(arena, neighbour)
        if not value & MS_USED:
            other = value & ~MS_FLAGS
            if other < MS_MIN_BLOCK or other & 15 or other > end - neighbour:
                raise _Damaged()
            list_remove(arena, neighbour, other)
            size += other
            commit(arena, block, size | (head & MS_PREV_FREE))
    if head & MS_PREV_FREE:
        if block - start < MS_MIN_BLOCK:
            raise _Damaged()
        other = peek(arena, block - 8)
        if other < MS_MIN_BLOCK or other & 15 or other > block - start:
            raise _Damaged()
        if free_block(arena, block - other, &previous_head) != other:
            raise _Damaged()
        block -= other
        list_remove(arena, block, other)
        size += other
        commit(arena, block, size | (previous_head & MS_PREV_FREE))
    poke(arena, block + size - 8, size)
    list_insert(arena, block, size)
    neighbour = block + size
    if neighbour < end:
        commit(arena, neighbour, peek(arena, neighbour) | MS_PREV_FREE)
    return 0


cdef int release(Arena *arena, uint64_t payload, bint named, object name) except -1:
    cdef uint64_t head = 0, size
    cdef uint64_t block = used_block(arena, payload, &head)
    if not block:
        raise ValueError(
            f"address 0x{payload:x} is not a live allocation of this region: it was never "
            f"returned by alloc(), or it was already freed")
    if bool(head & MS_NAMED) != named:
        raise ValueError(f"0x{payload:x} belongs to a named object; delete it by name"
                         if not named else f"0x{payload:x} is not a named object's block")
    size = head & ~MS_FLAGS
    try:
        commit(arena, block, size | (head & MS_PREV_FREE))
        # After the commit, so a repair that finds the block still USED can finish this free.
        poke(arena, block + 8, 0)
        arena.bk.free_bytes = ms_peek(&arena.bk.free_bytes) + size
        coalesce(arena, block, size, head)
    except _Damaged:
        rebuild(arena, name)
    return 0


cdef corrupt(uint64_t block, uint64_t head, object name):
    return CorruptBookkeepingError(
        f"allocator block header at 0x{block:x} is damaged (size word 0x{head:x}): "
        f"something wrote over the allocator's data inside the region", name)


cdef int rebuild(Arena *arena, object name) except -1:
    """Recompute every derived structure from the block chain, merging adjacent free blocks."""
    try:
        rebuild_chain(arena, name)
    except _Damaged:
        raise CorruptBookkeepingError(
            "the allocator's block chain changed under its repair", name) from None
    return 0


cdef int rebuild_chain(Arena *arena, object name) except -1:
    cdef ms_bookkeeping_t *bk = arena.bk
    cdef uint64_t end = arena.end, block = arena.start
    cdef uint64_t head, want, size, run = 0, run_size = 0, free_bytes = 0
    cdef bint previous_free = False
    if not ms_peek(&bk.formatted):
        return 0  # the next allocation formats the arena from scratch
    bk.fl_bitmap = 0
    memset(bk.sl_bitmap, 0, sizeof(bk.sl_bitmap))
    memset(bk.heads, 0, sizeof(bk.heads))
    while block < end:
        head = peek(arena, block)
        size = head & ~MS_FLAGS
        if size < MS_MIN_BLOCK or size & 15 or size > end - block:
            raise corrupt(block, head, name)
        if head & MS_USED:
            if peek(arena, block + 8) != check_word(arena, block, size):
                raise corrupt(block, head, name)
            if run:
                poke(arena, run + run_size - 8, run_size)
                list_insert(arena, run, run_size)
                free_bytes += run_size
                run = 0
            want = size | (head & (MS_USED | MS_NAMED)) | (MS_PREV_FREE if previous_free else 0)
            if head != want:
                commit(arena, block, want)
            previous_free = False
        else:
            if run:
                run_size += size
            else:
                run, run_size = block, size
            commit(arena, run, run_size)
            previous_free = True
        block += size
    if run:
        poke(arena, run + run_size - 8, run_size)
        list_insert(arena, run, run_size)
        free_bytes += run_size
    bk.free_bytes = free_bytes
    return 0


cdef dict verify_allocator(Arena *arena, object name):
    """Check every invariant, derived ones included; return statistics of the heap."""
    try:
        return verify_heap(arena, name)
    except _Damaged:
        raise CorruptBookkeepingError("the allocator's bookkeeping points outside its arena",
                                      name) from None


cdef dict verify_heap(Arena *arena, object name):
    cdef ms_bookkeeping_t *bk = arena.bk
    cdef uint64_t end = arena.end, block = arena.start, head, size, candidate, back
    cdef uint64_t free_bytes = 0, free_blocks = 0, used_blocks = 0, named_blocks = 0
    cdef uint64_t largest = 0, listed = 0, fl_bitmap = ms_peek(&bk.fl_bitmap)
    cdef uint32_t sl_bitmap
    cdef unsigned fl, sl, want_fl, want_sl
    cdef bint previous_free = False
    if not ms_peek(&bk.formatted):
        # Nothing written in the arena yet: it counts as one free block.
        if fl_bitmap:
            raise CorruptBookkeepingError("free lists of an unformatted arena are not empty", name)
        return {"arena_bytes": end - arena.start, "free_bytes": end - arena.start,
                "free_blocks": int(end > arena.start), "used_blocks": 0, "named_blocks": 0,
                "largest_free": end - arena.start}
    while block < end:
        head = peek(arena, block)
        size = head & ~MS_FLAGS
        if size < MS_MIN_BLOCK or size & 15 or size > end - block:
            raise corrupt(block, head, name)
        if bool(head & MS_PREV_FREE) != previous_free:
            raise CorruptBookkeepingError(f"PREV_FREE flag wrong at 0x{block:x}", name)
        if head & MS_USED:
            if peek(arena, block + 8) != check_word(arena, block, size):
                raise corrupt(block, head, name)
            used_blocks += 1
            named_blocks += bool(head & MS_NAMED)
            previous_free = False
        else:
            if previous_free:
                raise CorruptBookkeepingError(f"free block at 0x{block:x} not merged", name)
            if peek(arena, block + size - 8) != size:
                raise CorruptBookkeepingError(f"footer wrong in block 0x{block:x}", name)
            free_blocks += 1
            free_bytes += size
            largest = max(largest, size)
            previous_free = True
        block += size
    for fl in range(MS_FL_COUNT):
        sl_bitmap = ms_peek32(&bk.sl_bitmap[fl])
        if bool(fl_bitmap >> fl & 1) != bool(sl_bitmap) or sl_bitmap >> MS_SL_COUNT:
            raise CorruptBookkeepingError(f"first-level bitmap wrong for class {fl}", name)
        for sl in range(MS_SL_COUNT):
            candidate = ms_peek(&bk.heads[fl][sl])
            if bool(sl_bitmap >> sl & 1) != bool(candidate):
                raise CorruptBookkeepingError(f"bitmap wrong for class {fl}.{sl}", name)
            back = 0
            while candidate:
                listed += 1
                if listed > free_blocks:
                    raise CorruptBookkeepingError("free lists hold more blocks than the heap", name)
                try:
                    size = free_block(arena, candidate, &head)
                except _Damaged:
                    raise CorruptBookkeepingError(
                        f"free list {fl}.{sl} holds a bad block 0x{candidate:x}", name) from None
                size_class(size, &want_fl, &want_sl)
                if (want_fl, want_sl) != (fl, sl) or peek(arena, candidate + 24) != back:
                    raise CorruptBookkeepingError(f"free list {fl}.{sl} is inconsistent", name)
                back = candidate
                candidate = peek(arena, candidate + 16)
    if listed != free_blocks or free_bytes != ms_peek(&bk.free_bytes):
        raise CorruptBookkeepingError("free lists or free-byte count disagree with the heap", name)
    return {
        "arena_bytes": end - arena.start,
        "free_bytes": free_bytes,
        "free_blocks": free_blocks,
        "used_blocks": used_blocks,
        "named_blocks": named_blocks,
        "largest_free": largest,
    }
