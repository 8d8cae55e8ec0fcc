"""`kvroute sidecar`: the decode pod's P/D sidecar, which runs the prefill a gateway's Endpoint Picker asked for."""
