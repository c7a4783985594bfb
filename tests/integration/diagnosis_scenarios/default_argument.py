"""A mutable default argument that collects tensors across calls."""
import torch


def predict(request, history=[]):  # noqa: B006 - the leak under test
    embedding = torch.randn(4, 128)  # LEAK
    history.append(embedding)
    return embedding.sum().item()


def handle(request):
    return predict(request)
