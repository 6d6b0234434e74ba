"""Quick probe: confirmed persistent publishes (1 KiB, 100 in flight) with one consumer."""
import asyncio, sys, time
import aio_pika

URI = sys.argv[1]
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20000

async def main():
    conn = await aio_pika.connect(URI)
    pub = await conn.channel(publisher_confirms=True)
    q = await pub.declare_queue("probe", durable=True)
    await q.purge()
    cons_ch = await conn.channel()
    await cons_ch.set_qos(prefetch_count=200)
    cq = await cons_ch.get_queue("probe")
    got = 0
    done = asyncio.Event()
    async def on_msg(m):
        nonlocal got
        await m.ack()
        got += 1
        if got >= N:
            done.set()
    await cq.consume(on_msg)
    body = b"x" * 1024
    sem = asyncio.Semaphore(100)
    t = time.time()
    async def one(i):
        async with sem:
            await pub.default_exchange.publish(aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key="probe")
    await asyncio.gather(*(one(i) for i in range(N)))
    t_pub = time.time() - t
    await asyncio.wait_for(done.wait(), 120)
    t_all = time.time() - t
    print(f"confirmed {N} in {t_pub:.2f}s = {N/t_pub:.0f} msg/s; consumed all in {t_all:.2f}s = {N/t_all:.0f} msg/s")
    await conn.close()

asyncio.run(main())
