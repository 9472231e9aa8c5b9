"""
The support modules: the machinery that the story files (carope.py, train.py, prepare_data.py,
tasks.py, sample.py, compare.py) lean on, kept out of the way so that those read top to bottom.

    carope_triton  CARoPE's phase and rotation fused into one Triton kernel (the CUDA fast path)
    checkpoints    ckpt.pt: saved atomically with a checksum, loaded with one-line errors
    cli            argparse without abbreviations, one-line errors, the command that was run
    devices        device, precision, compilation, processes, the GPU peaks behind MFU
    files          atomic writes, the temp files killed writers leave, folder locks, --out-dir's check
    hub            the Hugging Face download client (resumable, checked by sha256)
    manifests      a data folder's manifest.json: made, read and checked
    pairs          which of RoPE's pairs complete a turn within the context, and their share of q.k
    readers        documents from .txt, .jsonl, .parquet and the embedded King James corpus
    runs           a run folder: config.json, log.jsonl, locks, what a rerun may continue
    settings       train.py's flags checked against each other, a resumed checkpoint, the model and the data
    shards         the token shard format (llm.c's) and the data folders that hold shards
    sweeps         a run beside a committed compare.py sweep of its recipe, when the recipes are the same
    tokenizer      the GPT-2 BPE and the byte tokenizer, offline; the pool that tokenises in parallel
"""
