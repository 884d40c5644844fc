"""The LSTM decoder: word embedding, LSTM, linear layer to the vocabulary.

As in the paper, the image embedding is the LSTM's first input, shown once (x_-1 = CNN(I)); its
output is discarded, and the start token (x_0) predicts the first word. Showing the image only
once is deliberate: Vinyals et al. found that feeding it at every step made the LSTM overfit the
image noise. `init_state` runs that image step, so training (`forward`) and decoding (`step`)
share one code path for it.

Decoding state is (h, c) with the batch dimension first, (N, layers, H), rather than nn.LSTM's
(layers, N, H): the beam search reorders every state tensor along dim 0 without knowing what it is.

`forward` does not pack the padded batch. The LSTM is causal, so padding after a caption's end
token never changes the outputs at its real positions; the loss ignores the pad positions, and
skipping pack/unpack is simpler and, for caption-length sequences, no slower.
"""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (N, layers, H)
_LSTM_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # nn.LSTM's, per layer


class LSTMDecoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embed_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        dropout: float = 0.0,
        pad_id: int = 0,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_size, padding_idx=pad_id)
        # nn.LSTM's own dropout acts only between layers and warns when there is one layer.
        inner_dropout = dropout if num_layers > 1 else 0.0
        self.lstm = nn.LSTM(
            embed_size, hidden_size, num_layers, batch_first=True, dropout=inner_dropout
        )
        self.drop = nn.Dropout(dropout)  # on the LSTM inputs and outputs, as in im2txt
        self.out = nn.Linear(hidden_size, vocab_size)

    def init_state(self, image_embedding: torch.Tensor) -> State:
        """Show the image once: image embedding (B, E) -> state, each (B, layers, H)."""
        B, L, H = image_embedding.size(0), self.lstm.num_layers, self.lstm.hidden_size
        zeros = image_embedding.new_zeros(B, L, H)  # (B, layers, H)
        _, state = self._cell(self.drop(image_embedding), (zeros, zeros))
        return state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One decoding step: tokens (N,) -> log-probabilities of the next word (N, V)."""
        y, state = self._cell(self.drop(self.embed(tokens)), state)  # y: (N, H)
        logits = self.out(self.drop(y))  # (N, V)
        return torch.log_softmax(logits.float(), dim=-1), state

    def _cell(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One time step of self.lstm, x (N, E) -> top layer output (N, H), new state.

        The same arithmetic as nn.LSTM (gates i, f, g, o) on its own weights, written out
        because nn.LSTM on CPU sends every call to oneDNN, which re-lays out the weights each
        time: for a single step these two matmuls per layer are about twice as fast.
        """
        h, c = state  # each (N, layers, H)
        hs, cs = [], []
        for layer in range(self.lstm.num_layers):
            if layer > 0:
                x = nn.functional.dropout(x, self.lstm.dropout, self.training)
            w_ih, w_hh, b_ih, b_hh = (getattr(self.lstm, f"{n}_l{layer}") for n in _LSTM_PARAMS)
            gates = nn.functional.linear(x, w_ih, b_ih) + nn.functional.linear(
                h[:, layer], w_hh, b_hh
            )
            i, f, g, o = gates.chunk(4, dim=1)  # each (N, H)
            c_new = torch.sigmoid(f) * c[:, layer] + torch.sigmoid(i) * torch.tanh(g)
            x = torch.sigmoid(o) * torch.tanh(c_new)  # (N, H)
            hs.append(x)
            cs.append(c_new)
        return x, (torch.stack(hs, dim=1), torch.stack(cs, dim=1))  # each (N, layers, H)

    def forward(self, image_embedding: torch.Tensor, captions: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: embeddings (B, E), captions (B, T) from <start> -> logits (B, T-1, V).

        The logits at position t predict captions[:, t + 1], so the targets are captions[:, 1:].
        """
        words = self.embed(captions[:, :-1])  # (B, T-1, E): the last token is never an input
        x = torch.cat([image_embedding.unsqueeze(1), words], dim=1)  # (B, T, E)
        y, _ = self.lstm(self.drop(x))  # (B, T, H)
        return self.out(self.drop(y[:, 1:]))  # (B, T-1, V): drop the image step's output
