"""What the configuration falls back on: GIE's built-in document, and the plugin types defaulting instantiates.

The built-in document is GIE's default (queue 2, kv-cache utilization 2, prefix cache 3, max-score picker); it is
loaded through the same path as a user's document. One difference: the max-score picker kvroute adds (in the
built-in document, or to a profile that names no picker) returns the two next-best endpoints as fallbacks, so a
request whose target cannot be reached is retried instead of failing. Fallbacks change nothing else.
"""

DEFAULT_PROFILE_NAME = "default"
DEFAULT_PICKER_TYPE = "max-score-picker"
DEFAULT_HANDLER_TYPE = "single-profile-handler"
DEFAULT_SATURATION_DETECTOR_TYPE = "utilization-detector"
DEFAULT_SCORER_WEIGHT = 1.0
DEFAULT_PICKER_PARAMETERS = {"maxNumOfEndpoints": 3}

DEFAULT_CONFIG_TEXT = """\
apiVersion: kvroute.io/v1alpha1
kind: EndpointPickerConfig
plugins:
  - type: queue-scorer
  - type: kv-cache-utilization-scorer
  - type: prefix-cache-scorer
  - type: max-score-picker
    parameters: {maxNumOfEndpoints: 3}
  - type: single-profile-handler
schedulingProfiles:
  - name: default
    plugins:
      - pluginRef: queue-scorer
        weight: 2
      - pluginRef: kv-cache-utilization-scorer
        weight: 2
      - pluginRef: prefix-cache-scorer
        weight: 3
      - pluginRef: max-score-picker
"""
