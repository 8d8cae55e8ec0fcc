"""`kvroute bench quality`: routing quality of kvroute and its peers on the discrete-event harness.

Workloads (`workloads`, YAML under `bench/workloads/`) x policies (`policies`) run through the simulator's
`simulate()` under a virtual clock (`runner`); the results are summarised (`metrics`) and written as JSON, a
markdown table and PNG plots (`report`). Policies that kvroute's configuration language can express run through
kvroute's real scheduler and plugins (`adapter`); the others are re-implementations in `policies/`.
"""
