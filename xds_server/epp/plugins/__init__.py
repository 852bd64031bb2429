"""The scheduling plugins, one per module, named after the Inference Extension's plugin types.

`base` holds the contracts (Filter, Scorer, Picker, ResponsePlugin), the values a scheduling cycle works on
(Endpoint, Candidate, PickRequest, CycleState) and the shared parameter parsing; `registry` maps an
EndpointPickerConfig's plugin `type` to the class that builds it. Algorithms follow the Inference Extension's
picker so a config written for it means the same here.
"""
