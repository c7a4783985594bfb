"""A DataLoader with a persistent worker whose dataset accumulates state in the worker."""
import torch
from torch.utils.data import DataLoader, Dataset


class Samples(Dataset):
    def __init__(self):
        self.seen = []

    def __len__(self):
        return 4

    def __getitem__(self, index):
        item = torch.randn(64, 1024)  # LEAK
        self.seen.append(item.clone())  # lives in the worker process, growing every epoch
        return item[0, :4]


loader = None


def handle(request):
    global loader
    if loader is None:  # created lazily so importing the scenario starts no process
        loader = DataLoader(Samples(), batch_size=4, num_workers=1, persistent_workers=True)
    for batch in loader:
        return batch.sum().item()
    return None
