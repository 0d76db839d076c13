"""The servelane model server: KServe V1 and the Open Inference Protocol (REST and gRPC) over onnxruntime."""
