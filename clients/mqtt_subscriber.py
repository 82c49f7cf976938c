"""Print the events the service publishes to MQTT: `python -m clients.mqtt_subscriber [--call ID] [--broker URL]`."""

from __future__ import annotations

import argparse
import asyncio
import json
from urllib.parse import urlsplit

import aiomqtt

from clients.ws_subscriber import describe


async def follow(broker: str, topic: str) -> None:
    url = urlsplit(broker)
    while True:  # the broker may restart; so do we
        try:
            async with aiomqtt.Client(
                url.hostname or "127.0.0.1",
                url.port or 1883,
                username=url.username,
                password=url.password,
                tls_params=aiomqtt.TLSParameters() if url.scheme == "mqtts" else None,
            ) as client:
                await client.subscribe(topic, qos=1)
                print(f"subscribed to {topic} on {url.hostname}:{url.port or 1883}", flush=True)
                async for message in client.messages:
                    event = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                    retained = " (retained)" if message.retain else ""
                    # With several nodes on one broker, each line says which call and which node it is from.
                    where = f"{event.get('call', '-')}@{event.get('node', '-')}"
                    print(f"{where:<24} {describe(event)}{retained}", flush=True)
        except aiomqtt.MqttError as exc:
            print(f"broker unavailable ({exc}); retrying in 2 s", flush=True)
            await asyncio.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--prefix", default="microemo")
    parser.add_argument("--call", default="+", help="a call id (default: every call)")
    parser.add_argument("--types", default="#", help="e.g. emotion, or # for every type")
    args = parser.parse_args()
    topic = (
        f"{args.prefix}/{args.call}/+/{args.types}" if args.types != "#" else f"{args.prefix}/{args.call}/#"
    )
    try:
        asyncio.run(follow(args.broker, topic))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
