"""`kvroute bench live`: the same trace through kvroute and its peers, in front of one simulated fleet."""
