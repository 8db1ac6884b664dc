"""gpu_lstm.torch.LSTM on CUDA tensors vs torch.nn.LSTM (cuDNN): forward + backward time of one
training step, float32, on a GPU machine. Not yet run on a GPU.

    python3 benchmarks/torch_module_gpu.py > benchmarks/results/<date>-<device>/torch-module.txt
"""

import statistics

import torch

import gpu_lstm.torch as glt


def step_time(model, x, reps=20):
    """Median over ``reps`` of one forward + backward, CUDA events around each (after warm-up)."""
    for _ in range(3):
        y, _ = model(x)
        y.sum().backward()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y, _ = model(x)
        y.sum().backward()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def main():
    # FP32 with TF32 off on both sides (the same math, as docs/benchmarks.md asks).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, float32, TF32 off, median of 20")
    print("H     B    T    layers  cuDNN ms  gpu_lstm ms  compiled ms")
    for H, B, T, L in ((256, 64, 100, 1), (512, 64, 100, 2), (1024, 32, 200, 1)):
        torch.manual_seed(0)
        ref = torch.nn.LSTM(H, H, L, device="cuda")
        ref.flatten_parameters()
        m = glt.LSTM(H, H, L, device="cuda")
        m.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, H, device="cuda")
        print(f"{H:<5} {B:<4} {T:<4} {L:<7} {step_time(ref, x):8.2f}  {step_time(m, x):11.2f}  "
              f"{step_time(torch.compile(m, fullgraph=True), x):11.2f}")


if __name__ == "__main__":
    main()
