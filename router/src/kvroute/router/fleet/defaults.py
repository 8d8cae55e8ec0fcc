"""Fleet sync's defaults, in a module of their own so that the command line can show them without loading ZMQ."""

DEFAULT_FLEET_PORT = 9005
DEFAULT_SYNC_INTERVAL = 0.0  # seconds between batches; 0: send as soon as the event loop is free
DEFAULT_PEER_TIMEOUT = 10.0  # seconds of silence before a peer is forgotten (peers send a heartbeat every second)
