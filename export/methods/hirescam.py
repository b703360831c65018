"""HiResCAM (Draelos and Carin 2020): ReLU(sum_k g_k * A_k), the gradients
multiplied in position by position instead of averaged first, so the map shows
what the logit actually depends on at each position."""

from .base import SummedTerms


class HiResCam(SummedTerms):
    name = "hirescam"

    def terms(self, activations, gradients):
        return gradients * activations
