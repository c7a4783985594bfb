"""Tensors kept in a class attribute shared by every instance."""
import torch


class Service:
    seen = []  # noqa: RUF012 - the leak under test

    def predict(self, request):
        features = torch.randn(4, 128)  # LEAK
        Service.seen.append(features)
        return features.mean().item()


service = Service()


def handle(request):
    return service.predict(request)
