"""servelane's benchmark suite (``make bench`` / ``python -m bench``).

``harness`` measures (phases, server CPU, percentiles, repeats, medians, tables, JSON), ``loadgen`` drives load
(wrk for HTTP, asyncio generators for HTTP and gRPC), ``floor`` runs onnxruntime in-process, ``models`` builds the
ONNX graphs the suites serve, and each suite module (``model_server``, ``queue_proxy``) names its cases and the
ratios it checks.
"""
