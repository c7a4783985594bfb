"""Hidden states of a (tiny, randomly initialised) BERT collected in a list with grad enabled:
each entry keeps its whole graph. Reported: huggingface/transformers#24315
(`hidden_states_list.append(hidden_states)` accumulates per batch) and #2595."""
import torch
from transformers import BertConfig, BertModel

torch.manual_seed(0)
model = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=48,
                             max_position_embeddings=32))
model.eval()
hidden_states_list = []


def handle(request):
    ids = torch.randint(0, 64, (2, 8))
    out = model(input_ids=ids)  # LEAK
    hidden_states_list.append(out.last_hidden_state)
