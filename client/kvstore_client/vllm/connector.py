"""KVStoreConnector: kvstore as vLLM's KV cache, through vLLM's KV connector API (v1).

Loaded out of tree, no vLLM change:

    --kv-transfer-config '{"kv_connector": "KVStoreConnector",
        "kv_connector_module_path": "kvstore_client.vllm.connector", "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {"address": "127.0.0.1:50051", "tenant": "team-a"}}'

vLLM builds one instance per role: in the scheduler (``SchedulerSide``: lookups, what to load
and save) and in each worker (``WorkerSide``: moving chunks in and out of the paged cache). This
class only routes vLLM's calls to the side it runs as. Settings: ``ConnectorConfig``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from kvstore_client.vllm.config import ConnectorConfig, scheme_for
from kvstore_client.vllm.layout import check_cpu_caches, check_model, ordered_layers
from kvstore_client.vllm.meta import ConnectorMeta
from kvstore_client.vllm.scheduler import SchedulerSide
from kvstore_client.vllm.store import open_store
from kvstore_client.vllm.worker import WorkerSide

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

log = logging.getLogger(__name__)


class KVStoreConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: VllmConfig, role: KVConnectorRole,
                 kv_cache_config: KVCacheConfig | None = None) -> None:
        super().__init__(vllm_config=vllm_config, role=role,
                         kv_cache_config=kv_cache_config)  # type: ignore[arg-type]
        self.config = ConnectorConfig.from_extra(self._kv_transfer_config.kv_connector_extra_config)
        block_size = vllm_config.cache_config.block_size
        check_model(vllm_config, kv_cache_config)
        self.scheduler: SchedulerSide | None = None
        self.worker: WorkerSide | None = None
        if role == KVConnectorRole.SCHEDULER:
            tp = vllm_config.parallel_config.tensor_parallel_size
            schemes = [scheme_for(self.config, vllm_config, r) for r in range(tp)]
            stores = [open_store(self.config, s, "vllm-scheduler") for s in schemes]
            self.scheduler = SchedulerSide(self.config, schemes, stores, block_size)
            log.info("KVStoreConnector (scheduler): namespace %s, chunks of %d tokens",
                     schemes[0].namespace_id(), self.config.chunk_tokens)
        else:
            from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

            rank = get_tensor_model_parallel_rank()
            scheme = scheme_for(self.config, vllm_config, rank)
            store = open_store(self.config, scheme, f"vllm-worker-tp{rank}")
            self.worker = WorkerSide(self.config, scheme, store, rank, block_size)

    # ---- worker side --------------------------------------------------------------------
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]) -> None:
        from vllm.platforms import current_platform

        assert self.worker is not None
        mc, pc = self._vllm_config.model_config, self._vllm_config.parallel_config
        layers = ordered_layers(kv_caches)
        check_cpu_caches(layers, mc.get_num_kv_heads(pc), mc.get_head_size(),
                         self._vllm_config.cache_config.block_size, current_platform.is_cpu())
        self.worker.register(layers)

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        assert self.worker is not None
        self.worker.start_load(self._meta())

    def wait_for_layer_load(self, layer_name: str) -> None:
        assert self.worker is not None
        self.worker.wait_layer(layer_name)

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor,
                      attn_metadata: AttentionMetadata, **kwargs: Any) -> None:
        # Nothing per layer: a chunk is one tensor of all layers, copied out of the blocks in
        # the background once the step's last layer has run (wait_for_save).
        return

    def wait_for_save(self) -> None:
        assert self.worker is not None
        self.worker.end_load()
        self.worker.submit_saves(self._meta())

    def handle_preemptions(self, kv_connector_metadata: KVConnectorMetadata) -> None:
        # A preempted request's blocks are freed and may be overwritten: finish copying first.
        if self.worker is not None and isinstance(kv_connector_metadata, ConnectorMeta):
            if kv_connector_metadata.preempted:
                self.worker.wait_saves(kv_connector_metadata.preempted)

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        assert self.worker is not None
        return self.worker.finished_saving(finished_req_ids) or None, None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self.worker.take_load_errors() if self.worker is not None else set()

    def shutdown(self) -> None:
        for side in (self.worker, self.scheduler):
            if side is not None:
                side.close()

    def _meta(self) -> ConnectorMeta:
        meta = self._get_connector_metadata()
        assert isinstance(meta, ConnectorMeta)
        return meta

    # ---- scheduler side -----------------------------------------------------------------
    def get_num_new_matched_tokens(self, request: Request, num_computed_tokens: int
                                   ) -> tuple[int | None, bool]:
        assert self.scheduler is not None
        return self.scheduler.matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(self, request: Request, blocks: KVCacheBlocks,
                                 num_external_tokens: int) -> None:
        assert self.scheduler is not None
        self.scheduler.after_alloc(request, blocks, num_external_tokens)

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        assert self.scheduler is not None
        return self.scheduler.build_meta(scheduler_output)

    def request_finished(self, request: Request, block_ids: list[int]
                         ) -> tuple[bool, dict[str, Any] | None]:
        assert self.scheduler is not None
        return self.scheduler.finished(request), None

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a dropped save is a future miss
