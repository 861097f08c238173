"""The per-draw table of "Fawkes mid, projected cap, on more draws" (bench/RESULTS.md): no-defense
white-box ASR per seed, its mean, and PuFace's range, for the four projected-cap rows, from the five
draws' summary.csv files (seeds 0/1: lfw-fawkes-cap, seeds 2-4: lfw-fawkes-project).

    python bench/fawkes_project_draws.py
"""
import csv, sys
src = {0: "bench/results/lfw-fawkes-cap/summary.csv", 1: "bench/results/lfw-fawkes-cap-seed1/summary.csv",
       2: "bench/results/lfw-fawkes-project-seed2/summary.csv", 3: "bench/results/lfw-fawkes-project-seed3/summary.csv",
       4: "bench/results/lfw-fawkes-project-seed4/summary.csv"}
rows = {s: list(csv.DictReader(open(p))) for s, p in src.items()}
labels = [("fawkes-mid-project", "Fawkes mid (dlib)", "chip", "dlib-resnet29"), ("fawkes-mid-sface-project", "Fawkes mid (SFace)", "chip", "sface"),
          ("fawkes-mid-square112-project", "Fawkes mid (dlib)", "square112", "dlib-resnet29"), ("fawkes-mid-sface-square112-project", "Fawkes mid (SFace)", "square112", "sface")]
def get(s, a, v, t, d, key="asr_mean"):
    for r in rows[s]:
        if r["attack"] == a and r["victim"] == v and r["trainer"] == t and r["defense"] == d:
            return 100 * float(r[key])
out = []
normal = []
for a, name, geo, v in labels:
    for t in ("nn", "linear"):
        none = [get(s, a, v, t, "none") for s in src]
        pf = [get(s, a, v, t, "puface") for s in src]
        mean = sum(none) / len(none)
        b = lambda x: f"**{x:.1f}**" if x < 95 else f"{x:.1f}"
        out.append(f"| {name} | {geo} | {v} | {t} | " + " | ".join(b(x) for x in none) + f" | {mean:.1f} | {min(pf):.1f}-{max(pf):.1f} |")
        for s in src:
            n0, n1 = get(s, a, v, t, "none", "normal_acc_mean"), get(s, a, v, t, "puface", "normal_acc_mean")
            normal.append((abs(n0 - n1), n0, n1))
print("\n".join(out))
print(f"NORMAL max |difference| {max(x[0] for x in normal):.2f} points, range {min(min(x[1], x[2]) for x in normal):.1f}-{max(max(x[1], x[2]) for x in normal):.1f}%")
