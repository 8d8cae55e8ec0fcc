"""The Envoy ext_proc front door: kvroute as an Endpoint Picker for gateways that support InferencePool.

Modules: `protocol` (reading Envoy's messages, building the answers), `wire` (pre-serialised and hand-encoded
answers for the hot path), `exchange` (one HTTP request's conversation, translated into Director calls),
`processor` (what the exchanges of one front door share), `estimate` (output tokens when the response body is not
seen), `conformance` (the GIE conformance suite's test headers, `--gie-conformance`), `service` (the gRPC method),
`health` (gRPC health checking), `tls` (the serving certificate), `server` (the listeners of one front door).
docs/extproc.md describes the protocol, the Envoy configuration and the two response modes.
"""
