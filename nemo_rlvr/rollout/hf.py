"""transformers generation backend: CPU tests, the CPU demo, and reference numerics.

Sampling runs through `model.generate` (left-padded batches, KV cache). Each token's
log-prob is recomputed from the step's raw logits as `log_softmax(logits / T)` in
fp32, the same definition the learner uses, so `train/logprob_mismatch` is ~0 in
fp32. Greedy decoding (temperature 0) reports `log_softmax(logits)`. With top_p < 1
the sampled distribution is truncated but the reported log-prob is not (as the
learner cannot know the truncation): keep top_p = 1 for exact on-policy numerics.

Conventions every backend follows (tests/integration/test_generator_contract.py):
response_ids exclude the prompt and include the EOS token when it was generated
(finish_reason "stop"); a matched stop string also ends with "stop" and keeps the
tokens that produced it; "length" when max_new_tokens ran out. `text` is decoded
with special tokens skipped. Samples are prompt-major, group_id = prompt index.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from nemo_rlvr.types import Prompt, Sample, SamplingParams, WeightBucket
from nemo_rlvr.weights.buckets import iter_bucket_tensors
from nemo_rlvr.weights.gloo import Scratch, join_group, receive_buckets, update_info_meta
from nemo_rlvr.weights.shm import ShmReceiver

log = logging.getLogger(__name__)


class HFGenerator:
    """A causal LM from a local Hugging Face folder, sampled with `model.generate`."""

    def __init__(self, model_path: str, *, dtype: str = "float32", device: str | None = None,
                 batch_size: int = 256):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        """Sequences per generate call; larger batches are split (bounds memory)."""
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self._params = dict(self.model.named_parameters())
        self._shm: ShmReceiver | None = None
        """The learner's weight region when the weight transfer is shm (else gloo or buckets)."""

    # ------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[Sample]:
        rows = [(i, p) for i, p in enumerate(prompts) for _ in range(sampling.n)]  # prompt-major
        out: list[Sample] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            # One seed per chunk, derived from the call's seed: same call -> same samples.
            torch.manual_seed(sampling.seed * 1_000_003 + sampling.prompt_offset * sampling.n + start)
            out.extend(self._generate_chunk(chunk, sampling))
        return out

    def _generate_chunk(self, rows: list[tuple[int, Prompt]], sampling: SamplingParams) -> list[Sample]:
        ids = [p.token_ids for _, p in rows]
        width = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), width), self.pad_id, dtype=torch.long)      # [n, P]
        attn = torch.zeros((len(ids), width), dtype=torch.long)                       # [n, P]
        for r, x in enumerate(ids):  # left padding: every prompt ends at column P-1
            input_ids[r, width - len(x):] = torch.tensor(x)
            attn[r, width - len(x):] = 1
        greedy = sampling.temperature == 0
        gen_kwargs = dict(
            do_sample=not greedy, max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
            output_logits=True, return_dict_in_generate=True,
        )
        if not greedy:
            gen_kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.stop:
            gen_kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        res = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attn.to(self.device),
                                  **gen_kwargs)
        new = res.sequences[:, width:].cpu()                                          # [n, S]
        logits = torch.stack(res.logits, dim=1).float().cpu()                          # [n, S, V]
        temp = sampling.temperature if not greedy else 1.0
        logp = torch.log_softmax(logits / temp, dim=-1)                                # [n, S, V]
        logp_tok = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)                      # [n, S]
        samples = []
        for r, (pi, prompt) in enumerate(rows):
            resp, reason = self._cut(new[r].tolist(), sampling)
            samples.append(Sample(
                prompt_ids=list(prompt.token_ids), response_ids=resp,
                logprobs=logp_tok[r, : len(resp)].tolist(),
                text=self.tokenizer.decode(resp, skip_special_tokens=True),
                finish_reason=reason, group_id=pi, env=prompt.env, fields=prompt.fields,
                prompt_text=prompt.text, uid=prompt.uid,
            ))
        return samples

    def _cut(self, toks: list[int], sampling: SamplingParams) -> tuple[list[int], str]:
        """Response tokens up to and including EOS / the end of a stop string."""
        for t, tok in enumerate(toks):
            if tok in self.eos_ids:
                return toks[: t + 1], "stop"
            if sampling.stop:
                text = self.tokenizer.decode(toks[: t + 1], skip_special_tokens=True)
                if any(s in text for s in sampling.stop):
                    return toks[: t + 1], "stop"
        return toks, "length"

    # ------------------------------------------------------------------ weights

    def load_weights(self, buckets: Sequence[WeightBucket]) -> dict[str, float]:
        t0 = time.perf_counter()
        nbytes = self._copy_in(iter_bucket_tensors(buckets))
        return {"weight_sync/bytes": float(nbytes), "weight_sync/apply_s": time.perf_counter() - t0}

    @torch.no_grad()
    def _copy_in(self, named_tensors) -> int:
        nbytes = 0
        for name, tensor in named_tensors:
            param = self._params.get(name)
            if param is None:
                raise KeyError(f"weight sync: generator has no parameter {name!r}")
            param.data.copy_(tensor, non_blocking=True)
            nbytes += tensor.numel() * tensor.element_size()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return nbytes

    # ------------------------------------- the receive side of vLLM's weight-transfer calls

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        """Map the learner's shared-memory region (weights/shm.py: `shm_path`), or join its gloo
        weight-transfer group as rank `rank_offset` (the keys of vLLM's `NCCLWeightTransferInitInfo`,
        which weights/transfer.py sends to every generator)."""
        if "shm_path" in init_info:
            self._shm = ShmReceiver(init_info)
            return
        self._shm = None  # a reconnect may change the transport
        self._transfer_group = join_group(init_info["master_address"], init_info["master_port"],
                                          init_info["rank_offset"], init_info["world_size"])
        self._transfer_bucket_bytes = init_info["packed_buffer_size_bytes"]
        self._scratch = Scratch()

    def start_weight_update(self) -> None:  # nothing to prepare: parameters are overwritten in place
        pass

    def update_weights(self, update_info: dict[str, Any]) -> dict[str, float]:
        """Receive one update (vLLM's `NCCLWeightTransferUpdateInfo` keys) straight into the parameters."""
        t0 = time.perf_counter()
        if self._shm is not None:
            self._copy_in(self._shm.tensors(update_info))
            return {"weight_sync/apply_s": time.perf_counter() - t0}
        meta = update_info_meta(update_info)
        # each tensor is copied into its parameter before the next bucket arrives: buffers reused
        self._copy_in(receive_buckets(self._transfer_group, meta, self._transfer_bucket_bytes, self._scratch))
        return {"weight_sync/apply_s": time.perf_counter() - t0}

    def finish_weight_update(self) -> None:
        pass

    def sleep(self) -> None:  # HF keeps its weights resident; nothing to free
        pass

    def wake(self, tags: list[str] | None = None) -> None:
        pass


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return [i for i in ids if i is not None]
