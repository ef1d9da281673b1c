#!/usr/bin/python3
"""A real AMQP 1.0 client (Qpid Proton, as UMB's clients and Koji's protonmsg use) for the bus tests.

amqp1.py PORT send ADDRESS MESSAGE_ID BODY   send BODY as a text value, as protonmsg does
amqp1.py PORT drain ADDRESS                  print and accept every message waiting, a JSON line each
"""
import json
import sys

from proton import Message
from proton.reactor import DurableSubscription
from proton.utils import BlockingConnection


def main():
    port, command, address, *args = sys.argv[1:]
    connection = BlockingConnection(
        f"amqp://127.0.0.1:{port}", user="guest", password="guest", allowed_mechs="PLAIN", timeout=30
    )
    if command == "send":
        message_id, body = args
        sender = connection.create_sender(address)
        sender.send(Message(id=message_id, body=body, durable=True,
                            properties={"type": "BuildStateChange", "new": "COMPLETE"}))
    elif command == "drain":
        receiver = connection.create_receiver(address, credit=100, options=DurableSubscription())
        while True:
            try:
                message = receiver.receive(timeout=1)
            except Exception:  # proton.utils raises Timeout when nothing is waiting
                break
            body = message.body
            if isinstance(body, (bytes, memoryview)):
                body = bytes(body).decode()
            print(json.dumps({
                "topic": message.subject or message.address or "",
                "message_id": str(message.id),
                "body": body,
            }))
            receiver.accept()
    else:
        sys.exit(f"unknown command {command}")
    connection.close()


main()
