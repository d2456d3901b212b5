"""region.queue(): items handed over between processes exactly once, in order per producer,
intact; Full and Empty; Ctrl-C; producers and consumers killed mid-operation."""

import multiprocessing
import os
import queue
import signal
import zlib

import numpy
import pytest

import mshare

from helpers import start_python
from waiting_helpers import check_once_and_in_order, hand_over

ITEMS_PER_PRODUCER = 200
# The futex words in a queue's header: where consumers and producers sleep.
FILLED_OFFSET, EMPTIED_OFFSET = 8, 16


def _item(producer, sequence):
    payload = numpy.random.default_rng(producer * 100_000 + sequence).integers(
        0, 1 << 62, size=64 + sequence % 200, dtype=numpy.int64)
    return numpy.concatenate(([producer, sequence, zlib.crc32(payload.tobytes())], payload))


def _produce(name, producer):
    region = mshare.attach(name)
    items = region.queue("items")
    for sequence in range(ITEMS_PER_PRODUCER):
        if sequence % 2:
            items.put(_item(producer, sequence), timeout=60)
        else:
            item = _item(producer, sequence)
            with items.reserve(item.shape, item.dtype, timeout=60) as slot:
                slot[:] = item
            del slot  # a view of the region: it must go before the region closes
    region.close()


def _consume(name, count, results):
    region = mshare.attach(name)
    items = region.queue("items")
    taken = []
    for index in range(count):
        if index % 2:
            with items.get(timeout=60) as item:
                producer, sequence, crc = (int(v) for v in item[:3])
                intact = zlib.crc32(item[3:].tobytes()) == crc
            del item
        else:
            item = items.get_copy(timeout=60)
            producer, sequence, crc = (int(v) for v in item[:3])
            intact = zlib.crc32(item[3:].tobytes()) == crc
        taken.append((producer, sequence, intact))
    results.put(taken)
    region.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("producers, consumers", [(1, 1), (2, 2), (4, 4), (1, 3)])
def test_every_item_arrives_once_intact_and_in_order_per_producer(
        registry_path, name, method, producers, consumers):
    region = mshare.create(name, 4 << 20)
    region.queue("items", 6, 8 * 300)
    taken = hand_over(method, name, _produce, _consume, producers, consumers,
                      ITEMS_PER_PRODUCER)
    check_once_and_in_order(taken, producers, ITEMS_PER_PRODUCER)
    assert all(intact for part in taken for _, _, intact in part)  # checksums match
    with pytest.raises(queue.Empty):
        region.queue("items").get_nowait()
    region.close()
    mshare.unlink(name)


def test_items_keep_their_type_shape_and_bytes(registry_path, name):
    region = mshare.create(name, 1 << 20)
    items = region.queue("items", 4, 4096)
    grid = numpy.arange(12, dtype=">i2").reshape(3, 4)
    items.put(b"hello")
    items.put(memoryview(bytearray(b"abc")))
    items.put(grid)
    with items.reserve((2, 2), "complex64") as slot:
        slot[:] = 1 + 2j
    del slot
    assert bytes(items.get_copy()) == b"hello"
    assert bytes(items.get_copy()) == b"abc"
    with items.get() as view:
        assert view.dtype == grid.dtype and view.shape == (3, 4)
        assert (view == grid).all()
        assert not view.flags.writeable
        assert view.ctypes.data - region.addr in range(region.size)  # in the region: no copy
    copy = items.get_copy()
    assert copy.dtype == numpy.complex64 and (copy == 1 + 2j).all()
    assert region.objects() == {"items": "queue"}
    assert region.queue("items").slots == 4 and region.queue("items").slot_size == 4096
    del view, copy
    region.close()
    mshare.unlink(name)


def test_full_and_empty_raise_when_the_timeout_passes(registry_path, name):
    region = mshare.create(name, 1 << 20)
    items = region.queue("items", 2, 64)
    with pytest.raises(queue.Empty):
        items.get_nowait()
    with pytest.raises(queue.Empty):
        items.get_copy(timeout=0.05)
    items.put(b"1")
    items.put_nowait(b"2")
    with pytest.raises(queue.Full):
        items.put(b"3", timeout=0.05)
    with pytest.raises(queue.Full):
        items.put_nowait(b"3")
    assert [bytes(items.get_copy()) for _ in range(2)] == [b"1", b"2"]
    region.close()
    mshare.unlink(name)


def test_a_reserve_ended_by_an_exception_is_never_delivered(registry_path, name):
    region = mshare.create(name, 1 << 20)
    items = region.queue("items", 2, 64)
    with pytest.raises(KeyError):
        with items.reserve((4,), "uint8") as slot:
            slot[:] = 9
            raise KeyError("abandoned")
    del slot
    items.put(b"kept")
    assert bytes(items.get_copy()) == b"kept"
    with pytest.raises(queue.Empty):
        items.get_nowait()
    region.close()
    mshare.unlink(name)


def test_bad_arguments_change_nothing(registry_path, name):
    region = mshare.create(name, 1 << 20)
    items = region.queue("items", 2, 64)
    with pytest.raises(ValueError, match="does not fit the 64-byte slots"):
        items.put(b"x" * 65)
    with pytest.raises(TypeError, match="Python objects"):
        items.put(numpy.array([object()]))
    for slots, slot_size, error in ((0, 64, ValueError), (2, 0, ValueError),
                                    (2.0, 64, TypeError), (True, 64, TypeError)):
        with pytest.raises(error):
            region.queue("other", slots, slot_size)
    with pytest.raises(FileNotFoundError):
        region.queue("missing")
    with pytest.raises(FileExistsError):
        region.queue("items", 2, 64)
    region.event("flag")
    with pytest.raises(TypeError, match="'flag' is a named event, not a queue"):
        region.queue("flag")
    with pytest.raises(TypeError, match="'items' is a named queue, not an array"):
        region.array("items")
    assert region.names() == ["flag", "items"]
    with pytest.raises(queue.Empty):
        items.get_nowait()  # the refused puts left nothing
    region.close()
    mshare.unlink(name)


def test_a_producer_killed_mid_write_never_has_its_item_delivered(registry_path, name):
    region = mshare.create(name, 1 << 20)
    items = region.queue("items", 4, 4096)
    producer = start_python(f"""
        import sys, mshare
        region = mshare.attach({name!r})
        with region.queue("items").reserve((512,), "uint8") as slot:
            slot[:256] = 7
            print("writing", flush=True)
            sys.stdin.read()
    """, stdin=-1, stdout=-1, text=True)
    assert producer.stdout.readline().strip() == "writing"
    os.kill(producer.pid, signal.SIGKILL)
    producer.wait(60)
    items.put(b"after")
    assert bytes(items.get_copy(timeout=60)) == b"after"
    with pytest.raises(queue.Empty):
        items.get_nowait()
    for _ in range(8):  # every slot, the dead producer's included, is usable again
        items.put(b"again")
        assert bytes(items.get_copy()) == b"again"
    region.close()
    mshare.unlink(name)


def test_a_consumer_killed_holding_an_item_frees_its_slot_and_the_item_is_dropped(
        registry_path, name):
    region = mshare.create(name, 1 << 20)
    items = region.queue("items", 1, 64)
    items.put(b"first")
    consumer = start_python(f"""
        import sys, mshare
        region = mshare.attach({name!r})
        with region.queue("items").get(timeout=60) as item:
            print(bytes(item).decode(), flush=True)
            sys.stdin.read()
    """, stdin=-1, stdout=-1, text=True)
    assert consumer.stdout.readline().strip() == "first"
    os.kill(consumer.pid, signal.SIGKILL)
    consumer.wait(60)
    items.put(b"second", timeout=60)  # the only slot, freed from the dead reader
    assert bytes(items.get_copy()) == b"second"
    with pytest.raises(queue.Empty):
        items.get_nowait()
    region.close()
    mshare.unlink(name)


@pytest.mark.parametrize("blocked", ["get", "put"])
def test_ctrl_c_during_a_blocked_call_raises_and_leaves_the_queue_working(
        registry_path, name, blocked):
    region = mshare.create(name, 1 << 20)
    region.queue("items", 1, 64)
    offset = FILLED_OFFSET if blocked == "get" else EMPTIED_OFFSET
    waiter = start_python(f"""
        import mshare
        from waiting_helpers import interrupt_once_sleeping_on, word_addr
        region = mshare.attach({name!r})
        items = region.queue("items")
        if {blocked!r} == "put":
            items.put(b"fills it")
        interrupt_once_sleeping_on(word_addr(region, "items") + {offset})
        try:
            items.get_copy() if {blocked!r} == "get" else items.put(b"blocked")
            print("returned")
        except KeyboardInterrupt:
            print("interrupted")
        if {blocked!r} == "put":
            print(bytes(items.get_copy(timeout=0)).decode())
        items.put(b"works")
        print(bytes(items.get_copy(timeout=0)).decode())
        region.close()
    """, stdout=-1, text=True)
    output = waiter.communicate(timeout=60)[0].split()
    assert waiter.returncode == 0
    assert output == ["interrupted"] + (["fills", "it"] if blocked == "put" else []) + ["works"]
    region.close()
    mshare.unlink(name)


def _reserve_in_child(name, addresses):
    region = mshare.attach(name)
    with region.queue("items").reserve((1024,), "uint32") as slot:
        slot[:] = numpy.arange(1024, dtype="uint32")
        addresses.put(slot.ctypes.data)
    del slot
    region.close()


def test_reserve_and_get_lend_the_slot_itself_so_nothing_is_copied(registry_path, name):
    region = mshare.create(name, 1 << 20)
    items = region.queue("items", 2, 4096)
    payloads = {items.payload_addr(index) for index in range(items.slots)}
    context = multiprocessing.get_context("fork")
    addresses = context.Queue()
    producer = context.Process(target=_reserve_in_child, args=(name, addresses))
    producer.start()
    written_at = addresses.get(timeout=60)
    producer.join(60)
    assert producer.exitcode == 0
    assert written_at in payloads  # the producer wrote into a slot, in place
    with items.get(timeout=5) as item:
        # The consumer's array is that very memory, at the same address in this process.
        assert item.ctypes.data == written_at
        assert (item == numpy.arange(1024, dtype="uint32")).all()
        assert not item.flags.writeable and not item.flags.owndata
    del item
    region.close()
    mshare.unlink(name)
