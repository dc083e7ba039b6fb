"""hgad_edge.export: ONNX / TensorRT export and the optimized runtimes (placeholder)."""
