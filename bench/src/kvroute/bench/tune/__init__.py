"""`kvroute tune`: search the scheduling weights and parameters of an `EndpointPickerConfig` for given traffic."""
