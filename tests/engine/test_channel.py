import asyncio
import threading

from gemma_worker.engine.channel import EventChannel


async def test_items_from_another_thread_arrive_in_order() -> None:
    channel: EventChannel[int] = EventChannel(asyncio.get_running_loop(), capacity=1000)

    def produce() -> None:
        for i in range(500):
            channel.put(i)

    thread = threading.Thread(target=produce)
    thread.start()
    got = [await channel.get() for _ in range(500)]
    thread.join()
    assert got == list(range(500))


async def test_full_reports_a_slow_consumer() -> None:
    channel: EventChannel[str] = EventChannel(asyncio.get_running_loop(), capacity=2)
    channel.put("a")
    assert not channel.full()
    channel.put("b")
    assert channel.full()
    assert await channel.get() == "a"
    assert not channel.full()


async def test_put_after_loop_closed_does_not_raise() -> None:
    loop = asyncio.new_event_loop()
    channel: EventChannel[int] = EventChannel(loop, capacity=1)
    loop.close()
    channel.put(1)
