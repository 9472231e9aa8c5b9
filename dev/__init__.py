"""
Tools for a GPU machine, run from the repository's root:

    python -m dev.gpu_check   the first command on a new GPU: kernels, compile, a short run, speed
    python -m dev.bench       tokens/s and memory of the encodings, interleaved rounds, ratios to RoPE
"""
