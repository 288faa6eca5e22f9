"""The fused ops: argument checks, fake kernels and autograd around torch.ops.dreamer_fast.*."""
