"""`@lru_cache(maxsize=None)` on a Dataset's __getitem__: every sample ever read stays cached on
the class. Reported: MoonshotAI/Kimi-Audio#117 ("@lru_cache(maxsize=None) may cause memory
leakage when training data grows larger")."""
import functools

import torch


class Clips(torch.utils.data.Dataset):
    def __len__(self):
        return 1_000_000

    @functools.lru_cache(maxsize=None)  # noqa: B019, UP033 - the leak under test
    def __getitem__(self, index):
        return torch.randn(80, 4)  # LEAK


dataset = Clips()


def handle(request):
    return dataset[request].mean().item()
