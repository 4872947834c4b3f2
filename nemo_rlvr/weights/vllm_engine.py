"""vLLM worker side of the gloo weight transfer: an engine registered with vLLM's
`WeightTransferEngineFactory`, so a CPU vLLM (`weight_transfer_config={"backend": "gloo"}`) takes
weights through the same init / start / update / finish calls a GPU vLLM takes over NCCL.

It is vLLM's NCCL engine with the transport swapped: the same init and update info classes
(`NCCLWeightTransferInitInfo`, `NCCLWeightTransferUpdateInfo`), the same layerwise reload around
an update (`start_weight_update` / `finish_weight_update`, inherited), received tensors going to
`model.load_weights`; the buffers come from `weights.gloo.receive_buckets`. Importing this module
imports vLLM; call `register()` in the generator's process before building the engine.
"""

from __future__ import annotations

from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
from vllm.distributed.weight_transfer.nccl_engine import (
    NCCLWeightTransferEngine,
    NCCLWeightTransferInitInfo,
    NCCLWeightTransferUpdateInfo,
)

from nemo_rlvr.weights.gloo import join_group, receive_buckets
from nemo_rlvr.weights.transfer import BACKEND


class GlooWeightTransferEngine(NCCLWeightTransferEngine):
    """vLLM's NCCL weight-transfer engine over a gloo group (CPU)."""

    def init_transfer_engine(self, init_info: NCCLWeightTransferInitInfo) -> None:
        pc = self.parallel_config
        rank = pc.data_parallel_index * pc.world_size + pc.rank + init_info.rank_offset  # as NCCL's
        self.packed_buffer_size_bytes = init_info.packed_buffer_size_bytes
        self.model_update_group = join_group(init_info.master_address, init_info.master_port, rank,
                                             init_info.world_size)

    def receive_weights(self, update_info: NCCLWeightTransferUpdateInfo) -> None:
        if self.model_update_group is None:
            raise RuntimeError("gloo weight transfer not initialised: call init_weight_transfer_engine first")
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        meta = list(zip(update_info.names, update_info.dtype_names, update_info.shapes))
        with disable_mtp_completeness_check():
            self.model.load_weights(receive_buckets(self.model_update_group, meta, self.packed_buffer_size_bytes))

    def finish_weight_update(self) -> None:
        super().finish_weight_update()
        lm_head = getattr(self.model, "lm_head", None)
        tied = getattr(self.model_config.hf_config.get_text_config(), "tie_word_embeddings", False)
        if lm_head is not None and tied and self.device.type == "cpu":
            # vLLM CPU keeps a packed copy of a tied lm_head that loading the embedding does not
            # refresh (shared/notes/vllm-cpu.md); without this the logits use the old embedding
            lm_head.quant_method.process_weights_after_loading(lm_head)

    def shutdown(self) -> None:
        self.model_update_group = None  # a ProcessGroupGloo has no destroy()


def register() -> None:
    """Make `weight_transfer_config={"backend": "gloo"}` resolve to this engine in this process."""
    try:
        WeightTransferEngineFactory.register_engine(BACKEND, GlooWeightTransferEngine)
    except ValueError:  # registered already in this process
        pass
