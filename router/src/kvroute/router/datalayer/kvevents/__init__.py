"""KV events from the engines (vLLM's ZMQ publisher): wire decoding, one subscriber per subscription, and the
service that keeps the subscriptions of the configuration in force."""

from kvroute.router.datalayer.kvevents.decode import KVEventMessage, MalformedMessage, decode_message
from kvroute.router.datalayer.kvevents.service import KVEventsService
from kvroute.router.datalayer.kvevents.subscriber import KVEventsSubscriber

__all__ = ["KVEventMessage", "KVEventsService", "KVEventsSubscriber", "MalformedMessage", "decode_message"]
