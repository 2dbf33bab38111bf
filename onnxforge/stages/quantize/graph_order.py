"""Topological order for graphs with control flow. onnxruntime's quantizer can append the nodes it makes for an
If/Loop/Scan body after the nodes that use them (onnx.checker fails; ORT runs it), and onnxruntime's own sort
ignores the outer-scope names a subgraph reads, so it can place an If before the node that feeds its body."""

from __future__ import annotations


def _subgraphs(node):
    for a in node.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def _outer_reads(graph) -> set[str]:
    """Names a (sub)graph reads without defining them: they come from the enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    reads: set[str] = set()
    for n in graph.node:
        reads.update(x for x in n.input if x)
        for g in _subgraphs(n):
            reads |= _outer_reads(g)
        defined.update(n.output)
    reads.update(o.name for o in graph.output)
    return reads - defined


def sort_graph(graph, outer: frozenset[str] = frozenset()) -> None:
    """Stable topological sort of `graph` and of every subgraph in it (nodes keep their relative order where the
    data allows, so the same input gives the same output)."""
    nodes = list(graph.node)
    produced = {o for n in nodes for o in n.output if o}
    needs = []
    for n in nodes:
        reads = {x for x in n.input if x}
        for g in _subgraphs(n):
            reads |= _outer_reads(g)
        needs.append({x for x in reads if x in produced})  # the rest: inputs, initializers, outer scope
    done: set[str] = set()
    order, left = [], list(range(len(nodes)))
    while left:
        ready = [i for i in left if needs[i] <= done]
        if not ready:  # a cycle: leave the graph as it is, the checker will name it
            return
        for i in ready:
            order.append(nodes[i])
            done.update(o for o in nodes[i].output if o)
        left = [i for i in left if i not in set(ready)]
    if [id(n) for n in order] != [id(n) for n in nodes]:
        copies = [type(n)() for n in order]
        for c, n in zip(copies, order, strict=True):
            c.CopyFrom(n)
        del graph.node[:]
        graph.node.extend(copies)
    scope = outer | {i.name for i in graph.input} | {t.name for t in graph.initializer} | produced
    for n in graph.node:
        for g in _subgraphs(n):
            sort_graph(g, frozenset(scope))
