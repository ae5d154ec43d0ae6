"""A household agent written from docs/agents.md alone (it does not import testbed).

usage: python minimal_agent.py HOST PORT HOUSEHOLD KEY.pem PRICE
Waits for an open gate naming HOUSEHOLD, sells its forecast surplus or buys its deficit at
PRICE, prints the result and exits after the run's last result.
"""
import json
import sys

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.serialization import load_pem_private_key

host, port, me, key_file, price = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
with open(key_file, "rb") as f:
    key = load_pem_private_key(f.read(), None)


def on_connect(client, userdata, flags, reason, properties=None):
    client.subscribe([("testbed/+/gate", 1), (f"testbed/+/results/{me}", 1)])


def on_message(client, userdata, msg):
    if not msg.payload:
        return
    body = json.loads(msg.payload)
    run = msg.topic.split("/")[1]
    if body["type"] == "gate" and body["state"] == "open" and me in body["households"]:
        net = body["forecast_kwh"][me]
        order = {"type": "order", "run": body["run"], "interval": body["interval"],
                 "household": me, "side": "buy" if net.startswith("-") else "sell",
                 "energy_kwh": net.lstrip("-"), "price": price, "nonce": body["interval"]}
        signed = json.dumps(order, sort_keys=True, separators=(",", ":")).encode()
        order["signature"] = key.sign(signed).hex()
        client.publish(f"testbed/{run}/orders/{me}", json.dumps(order), qos=1)
    elif body["type"] == "result":
        print(json.dumps(body), flush=True)
        if body["last"]:
            client.disconnect()


client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
client.on_connect, client.on_message = on_connect, on_message
client.connect(host, port)
client.loop_forever()
