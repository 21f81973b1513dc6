"""PyTorch peer of `anomalyd bench model`: the same reference autoencoder, the same
measurements, the same JSON keys.

    python3 benches/torch_peer.py --cell lstm --d-input 1 --window 32 --hidden 32 --threads 1

Model: encoder RNN(d -> H) over W steps; its last hidden state repeated W times as the
decoder input; decoder RNN(H -> H); Linear(H -> d) on every step. float32, CPU.
Every figure is a median over repeated timed calls, as in src/bench/mod.rs.
"""
import argparse
import json
import resource
import time

import torch


class Autoencoder(torch.nn.Module):
    def __init__(self, cell, d, h):
        super().__init__()
        rnn = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        self.encoder = rnn(d, h)
        self.decoder = rnn(h, h)
        self.head = torch.nn.Linear(h, d)

    def forward(self, x):  # x: [W, B, d]
        _, state = self.encoder(x)
        h_n = state[0] if isinstance(state, tuple) else state
        z = h_n[-1].unsqueeze(0).expand(x.shape[0], -1, -1)
        y, _ = self.decoder(z)
        return self.head(y)


def flops_per_window(cell, d, w, h):
    g = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    return w * 2 * g * h * (d + h) + 2 * g * h * h + w * 2 * g * h * h + w * 2 * h * d


def median_time(seconds, f):
    end = time.perf_counter() + seconds * 0.2
    while time.perf_counter() < end:
        f()
    samples = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(samples) < 5:
        t = time.perf_counter()
        f()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return samples[len(samples) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    ap.add_argument("--d-input", type=int, default=1)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    model = Autoencoder(a.cell, a.d_input, a.hidden).float()
    w, d = a.window, a.d_input

    one = torch.rand(w, 1, d) * 2 - 1
    with torch.inference_mode():
        latency = median_time(a.seconds, lambda: model(one))
        batch = torch.rand(w, 256, d) * 2 - 1
        batch_time = median_time(a.seconds, lambda: model(batch))

    x = torch.rand(w, 32, d) * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), x)
        loss.backward()
        opt.step()

    train_time = median_time(a.seconds, train_step)
    print(json.dumps({
        "implementation": f"pytorch {torch.__version__}",
        "cell": a.cell,
        "d_input": d,
        "window": w,
        "hidden": a.hidden,
        "threads": a.threads,
        "score_latency_us": latency * 1e6,
        "score_windows_per_s": 256 / batch_time,
        "train_windows_per_s": 32 / train_time,
        "flops_per_window": flops_per_window(a.cell, d, w, a.hidden),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
