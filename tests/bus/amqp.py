#!/usr/bin/python3
"""A real AMQP 0-9-1 client (pika) for the bus tests.

amqp.py PORT publish TOPIC MESSAGE_ID BODY   publish BODY to amq.topic, as Fedora Messaging does
amqp.py PORT listen QUEUE BINDING            declare a durable QUEUE bound to BINDING on amq.topic
amqp.py PORT drain QUEUE                     print and take every message in QUEUE, a JSON line each
"""
import json
import sys

import pika


def main():
    port, command, *args = sys.argv[1:]
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", int(port)))
    channel = connection.channel()
    if command == "publish":
        topic, message_id, body = args
        channel.confirm_delivery()
        channel.basic_publish(
            "amq.topic",
            topic,
            body.encode(),
            pika.BasicProperties(
                content_type="application/json",
                content_encoding="utf-8",
                delivery_mode=2,
                message_id=message_id,
                headers={
                    "fedora_messaging_schema": "koji_fedoramessaging.build.BuildStateChangeV1",
                    "fedora_messaging_severity": 20,
                    "sent-at": "2026-12-02T05:00:00+00:00",
                },
            ),
        )
    elif command == "listen":
        queue, binding = args
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, "amq.topic", binding)
    elif command == "drain":
        (queue,) = args
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            print(json.dumps({
                "topic": method.routing_key,
                "message_id": properties.message_id,
                "content_type": properties.content_type,
                "body": body.decode(),
            }))
    else:
        sys.exit(f"unknown command {command}")
    connection.close()


main()
