"""Benchmarks against published results (`nas bench nb201`) and Zoph & Le's scheme in
simulated time, for cluster-scale figures on a laptop."""
