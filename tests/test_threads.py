"""Threads of one process attaching, writing, closing and unlinking concurrently."""

import threading

import mshare


def test_threads_share_mappings_without_deadlock_or_loss(registry_path):
    names = [f"t{i}" for i in range(3)]
    errors = []
    rounds = 60

    def worker(index):
        try:
            for round_number in range(rounds):
                name = names[(index + round_number) % len(names)]
                try:
                    region = mshare.create(name, 4096)
                except FileExistsError:
                    try:
                        region = mshare.attach(name)
                    except FileNotFoundError:
                        continue  # unlinked between our two calls
                with region:
                    region.buf[index] = round_number % 251
                    assert region.buf[index] == round_number % 251
                if round_number % 7 == index:
                    try:
                        mshare.unlink(name)
                    except FileNotFoundError:
                        pass
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    assert errors == []
    for name in names:
        try:
            mshare.unlink(name)
        except FileNotFoundError:
            pass
