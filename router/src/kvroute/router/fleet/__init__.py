"""Router replicas of one pool sharing their routing state (`sync`), and the transport between them."""
