"""Batching crop items: padding crop lists to one length, batches of one resized size, subsets
that keep the datasets' metadata, and sharding evaluation over processes."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler

# Padding values of the per-crop keys: nothing can score a padded crop by accident.
PADDED_KEYS = {"crop_box": -1.0, "score": float("nan"), "gt_crops": -1.0}


def _pad_stack(tensors: list[torch.Tensor], length: int, value: float) -> torch.Tensor:
    padded = tensors[0].new_full((len(tensors), length, *tensors[0].shape[1:]), value)
    for row, tensor in enumerate(tensors):
        padded[row, : len(tensor)] = tensor
    return padded


def collate_crops(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch items of one resized size; crops are padded to the largest count.

    ``crop_valid`` (B, N) marks real crops (``all_crops_valid`` says whether every one is); padded
    boxes are -1s and padded scores NaN.
    """
    if not items:
        raise ValueError("collate_crops needs at least one item")
    sizes = {tuple(item["image"].shape[-2:]) for item in items}
    if len(sizes) > 1:
        described = ", ".join(f"{item['name']}: {item['image'].shape[-1]}x{item['image'].shape[-2]}" for item in items)
        raise ValueError(
            f"collate_crops needs images of one resized size, got {described}; batch with SizeBucketBatchSampler"
        )
    keys = set(items[0])
    for item in items[1:]:
        if set(item) != keys:
            raise ValueError(
                f"items {items[0]['name']} and {item['name']} have different keys: {sorted(keys ^ set(item))}"
            )
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if key in PADDED_KEYS:
            batch[key] = _pad_stack(values, max(len(value) for value in values), PADDED_KEYS[key])
        elif isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], (bool, int, float)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    counts = torch.tensor([len(item["crop_box"]) for item in items])
    batch["crop_valid"] = torch.arange(batch["crop_box"].shape[1]) < counts[:, None]
    batch["all_crops_valid"] = bool(batch["crop_valid"].all())  # known on the host: no device sync to ask
    return batch


@runtime_checkable
class ResizedSizes(Protocol):
    """What the sampler needs: a length and each item's resized size (a dataset or a subset of one)."""

    def __len__(self) -> int: ...

    def resized_size_of(self, index: int) -> tuple[int, int]: ...


@runtime_checkable
class NamedCrops(ResizedSizes, Protocol):
    """A crop dataset as subsets and evaluation use it: item dicts by index, the names of its images
    and each image's resized size (every dataset of the cropping and PIC scripts)."""

    @property
    def names(self) -> list[str]: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@runtime_checkable
class ScoredCrops(NamedCrops, Protocol):
    """A training set: also the mean crop score of its annotations (the loss's score normalisation)."""

    @property
    def score_mean(self) -> float: ...


class SizeBucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose images share a resized size, so ``collate_crops`` can stack them.

    Each epoch (``set_epoch``) reshuffles within every size and the order of the
    batches, from ``seed + epoch``. With ``num_replicas`` > 1 each rank takes every
    ``num_replicas``-th batch; the batch list is cut (``drop_last``) or wrapped around
    so every rank gets the same number of batches.
    """

    def __init__(
        self,
        dataset: ResizedSizes,
        batch_size: int,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.seed, self.num_replicas, self.rank = seed, num_replicas, rank
        self.epoch = 0
        buckets: dict[tuple[int, int], list[int]] = {}
        for index in range(len(dataset)):
            buckets.setdefault(dataset.resized_size_of(index), []).append(index)
        self.buckets = [buckets[size] for size in sorted(buckets)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for bucket in self.buckets:
            if self.shuffle:
                bucket = [bucket[i] for i in torch.randperm(len(bucket), generator=generator).tolist()]
            for start in range(0, len(bucket), self.batch_size):
                batch = bucket[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def _batches_per_replica(self, total: int) -> int:
        if self.drop_last:
            return total // self.num_replicas
        return math.ceil(total / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        wanted = self._batches_per_replica(len(batches)) * self.num_replicas
        if wanted > len(batches):
            batches = batches * math.ceil(wanted / len(batches))
        yield from batches[:wanted][self.rank :: self.num_replicas]

    def __len__(self) -> int:
        total = 0
        for bucket in self.buckets:
            total += len(bucket) // self.batch_size if self.drop_last else math.ceil(len(bucket) / self.batch_size)
        return self._batches_per_replica(total)


class NamedSubset(Dataset):
    """The images ``indices`` of a crop dataset; it still answers the questions the samplers and trainers ask."""

    def __init__(self, dataset: NamedCrops, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[self.indices[index]]

    @property
    def names(self) -> list[str]:
        return [self.dataset.names[i] for i in self.indices]

    @property
    def score_mean(self) -> float:
        """The whole dataset's (the normalisation the model was trained with); only training sets have one."""
        if not isinstance(self.dataset, ScoredCrops):
            raise AttributeError(f"{type(self.dataset).__name__} has no score_mean: not a scored training set")
        return self.dataset.score_mean

    def resized_size_of(self, index: int) -> tuple[int, int]:
        return self.dataset.resized_size_of(self.indices[index])


def evaluation_loader(
    dataset: Dataset, images_per_batch: int = 1, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Every image of ``dataset`` (a :class:`ResizedSizes` dataset) once, ``images_per_batch`` of one
    resized size per batch."""
    if not isinstance(dataset, ResizedSizes):
        raise TypeError(f"{type(dataset).__name__} cannot be batched by size: it has no resized_size_of")
    sampler = SizeBucketBatchSampler(dataset, images_per_batch, shuffle=False)
    return DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_crops, num_workers=num_workers, pin_memory=pin_memory
    )


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard_for_this_process(dataset: Dataset) -> Dataset:
    """Under torch.distributed, this process's share of ``dataset`` (a :class:`NamedCrops` dataset:
    every world-size-th image)."""
    if not distributed():
        return dataset
    rank, world = dist.get_rank(), dist.get_world_size()
    if isinstance(dataset, NamedSubset):
        return NamedSubset(dataset.dataset, dataset.indices[rank::world])
    if not isinstance(dataset, NamedCrops):
        raise TypeError(f"{type(dataset).__name__} cannot be sharded: it has no names or resized_size_of")
    return NamedSubset(dataset, list(range(rank, len(dataset), world)))


def gather_from_processes(values: list) -> list:
    """Every process's ``values`` concatenated (rank order); the list itself without distribution."""
    if not distributed():
        return values
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return [value for part in gathered for value in part]
