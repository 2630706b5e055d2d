"""Parses formula text into an AST (a list of statements).

Grammar (C precedence, semantics.md §1.2 and §7.3):

    formula    := statement? (';' statement?)*
    statement  := NAME '=' expression | NAME '(' args ')' | NAME  -- `stop();`; a lone name
                                                                    is read for its effect
    expression := or ('?' expression ':' expression)?          -- right-associative
    or         := and ('||' and)*        and := equality ('&&' equality)*
    equality   := relational (('=='|'!=') relational)*
    relational := additive (('<'|'<='|'>'|'>=') additive)*
    additive   := term (('+'|'-') term)*   term := unary (('*'|'/') unary)*
    unary      := ('-'|'!') unary | postfix
    postfix    := primary ('.' NAME ('(' args ')')?)*
    primary    := NUMBER | STRING | NAME | NAME '(' args ')' | '(' expression ')'

A statement may omit its `;` when the next one starts with `name =` (the
published examples do this); the limits of §6.2 are enforced here, and so is
nesting depth, so that neither parsing nor evaluation can hit Python's
recursion limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import LIMIT, READ_ONLY, TOO_LONG, FormulaError, syntax_error
from .lexer import END, NAME, NUMBER, OP, STRING, Token, tokenize
from .samples import READ_ONLY_VARIABLES
from .types import TIME_INTERVAL_CONSTANTS

MAX_FORMULA_CHARS = 8192
MAX_STATEMENTS = 100
# Parenthesis/unary/ternary nesting the parser follows by recursion, and the
# depth of the finished tree (long `a+b+c+...` chains grow it without
# recursion).  Both are far beyond any real formula.
MAX_NESTING = 32
MAX_TREE_DEPTH = 100

# Bare words that are values of $NodeDeallocationOption (§1.2).
DEALLOCATION_WORDS = frozenset({"requeue", "terminate", "taskcompletion", "retaineddata"})


# ---------------------------------------------------------------------- AST
@dataclass(frozen=True, slots=True)
class Number:
    value: float
    position: int


@dataclass(frozen=True, slots=True)
class String:
    value: str
    position: int


@dataclass(frozen=True, slots=True)
class Name:
    name: str
    position: int


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    operand: Node
    position: int


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Node
    right: Node
    position: int


@dataclass(frozen=True, slots=True)
class Conditional:
    condition: Node
    when_true: Node
    when_false: Node
    position: int


@dataclass(frozen=True, slots=True)
class Call:
    function: str
    args: tuple[Node, ...]
    position: int


@dataclass(frozen=True, slots=True)
class Member:
    target: Node
    member: str
    position: int


@dataclass(frozen=True, slots=True)
class MethodCall:
    target: Node
    method: str
    args: tuple[Node, ...]
    position: int


Node = Number | String | Name | Unary | Binary | Conditional | Call | Member | MethodCall


@dataclass(frozen=True, slots=True)
class Assignment:
    target: str
    value: Node
    position: int


@dataclass(frozen=True, slots=True)
class CallStatement:
    call: Call
    position: int


@dataclass(frozen=True, slots=True)
class NameStatement:
    """A statement that is only a name: Batch parses it and reads the name when evaluating, so an
    undefined one is an evaluation error (recorded: azure-sdk-for-node batchservice-tests.json)."""

    name: Name
    position: int


Statement = Assignment | CallStatement | NameStatement

# Binary operators, loosest first (C order).
_PRECEDENCE = {
    "||": 1,
    "&&": 2,
    "==": 3, "!=": 3,
    "<": 4, "<=": 4, ">": 4, ">=": 4,
    "+": 5, "-": 5,
    "*": 6, "/": 6,
}


def parse(source: str) -> list[Statement]:
    """Parse a whole formula; raises FormulaError for syntax errors and limits."""
    if len(source) > MAX_FORMULA_CHARS:
        raise FormulaError(
            TOO_LONG,
            f"formula is {len(source)} characters; the limit is {MAX_FORMULA_CHARS}",
            None,
            reason=LIMIT,
        )
    return _Parser(source, tokenize(source)).formula()


class _Parser:
    def __init__(self, source: str, tokens: list[Token]) -> None:
        self.source = source
        self.tokens = tokens
        self.index = 0
        self.nesting = 0

    # -- helpers --------------------------------------------------------------
    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def peek(self, offset: int = 1) -> Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def at_op(self, text: str) -> bool:
        token = self.token
        return token.kind == OP and token.text == text

    def expect_op(self, text: str) -> Token:
        if not self.at_op(text):
            raise self.error(f"expected '{text}'")
        return self.advance()

    def error(self, detail: str, token: Token | None = None, reason: str = "Syntax") -> FormulaError:
        token = token or self.token
        found = "end of formula" if token.kind == END else repr(token.text if token.kind != STRING else f'"{token.text}"')
        return syntax_error(f"{detail}, found {found}", token.position, self.source, reason)

    def enter(self) -> None:
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise syntax_error(
                f"expression nested more than {MAX_NESTING} levels deep", self.token.position, self.source, LIMIT
            )

    # -- statements -----------------------------------------------------------
    def formula(self) -> list[Statement]:
        statements: list[Statement] = []
        while self.token.kind != END:
            if self.at_op(";"):
                self.advance()  # empty statement
                continue
            statement = self.statement()
            statements.append(statement)
            if len(statements) > MAX_STATEMENTS:
                raise syntax_error(
                    f"formula has more than {MAX_STATEMENTS} statements", statement.position, self.source, LIMIT
                )
            if self.at_op(";"):
                self.advance()
            elif self.token.kind == END:
                break
            elif not self.starts_assignment():
                raise self.error("expected ';' after statement")
        if not statements:
            raise syntax_error("formula has no statements", 0, self.source)
        return statements

    def starts_assignment(self) -> bool:
        following = self.peek()
        return self.token.kind == NAME and following.kind == OP and following.text == "="

    def statement(self) -> Statement:
        token = self.token
        if token.kind != NAME:
            raise self.error("expected a statement such as 'name = expression'")
        if self.peek().kind == OP and self.peek().text == "(":
            call = self.primary()
            assert isinstance(call, Call)
            self.check_depth(call, token)
            return CallStatement(call, token.position)
        following = self.peek()
        if following.kind == END or (following.kind == OP and following.text == ";"):
            self.advance()
            return NameStatement(Name(token.text, token.position), token.position)
        self.advance()
        self.check_target(token)
        self.expect_op("=")
        value = self.expression()
        self.check_depth(value, token)
        return Assignment(token.text, value, token.position)

    def check_target(self, token: Token) -> None:
        name = token.text
        if name in READ_ONLY_VARIABLES or name in TIME_INTERVAL_CONSTANTS:
            raise syntax_error(f"{name} is read-only and cannot be assigned", token.position, self.source, READ_ONLY)
        if name in DEALLOCATION_WORDS:
            raise syntax_error(f"'{name}' is a reserved word", token.position, self.source, READ_ONLY)

    def check_depth(self, node: Node, token: Token) -> None:
        # Iterative, so a pathological tree cannot overflow the stack here.
        stack = [(node, 1)]
        while stack:
            current, depth = stack.pop()
            if depth > MAX_TREE_DEPTH:
                raise syntax_error(
                    f"expression is more than {MAX_TREE_DEPTH} operations deep", token.position, self.source, LIMIT
                )
            for child in _children(current):
                stack.append((child, depth + 1))

    # -- expressions ----------------------------------------------------------
    def expression(self) -> Node:
        self.enter()
        condition = self.binary(1)
        if self.at_op("?"):
            question = self.advance()
            when_true = self.expression()
            self.expect_op(":")
            when_false = self.expression()
            condition = Conditional(condition, when_true, when_false, question.position)
        self.nesting -= 1
        return condition

    def binary(self, min_precedence: int) -> Node:
        # Precedence climbing: one Python frame per operator level actually
        # used, not one per grammar level, so nesting stays cheap.
        left = self.unary()
        while self.token.kind == OP:
            precedence = _PRECEDENCE.get(self.token.text)
            if precedence is None or precedence < min_precedence:
                break
            op = self.advance()
            right = self.binary(precedence + 1)  # +1: left-associative
            left = Binary(op.text, left, right, op.position)
        return left

    def unary(self) -> Node:
        if self.token.kind == OP and self.token.text in ("-", "!"):
            op = self.advance()
            self.enter()
            operand = self.unary()
            self.nesting -= 1
            return Unary(op.text, operand, op.position)
        return self.postfix()

    def postfix(self) -> Node:
        node = self.primary()
        while self.at_op("."):
            self.advance()
            name = self.token
            if name.kind != NAME or name.text.startswith("$"):
                raise self.error("expected a member or method name after '.'")
            self.advance()
            if self.at_op("("):
                node = MethodCall(node, name.text, self.arguments(), name.position)
            else:
                node = Member(node, name.text, name.position)
        return node

    def primary(self) -> Node:
        token = self.token
        if token.kind == NUMBER:
            self.advance()
            return Number(float(token.text), token.position)
        if token.kind == STRING:
            self.advance()
            return String(token.text, token.position)
        if token.kind == NAME:
            self.advance()
            if self.at_op("("):
                return Call(token.text, self.arguments(), token.position)
            if token.text in DEALLOCATION_WORDS:
                return String(token.text, token.position)
            return Name(token.text, token.position)
        if self.at_op("("):
            self.advance()
            inner = self.expression()
            self.expect_op(")")
            return inner
        raise self.error("expected a value")

    def arguments(self) -> tuple[Node, ...]:
        self.expect_op("(")
        args: list[Node] = []
        if not self.at_op(")"):
            args.append(self.expression())
            while self.at_op(","):
                self.advance()
                args.append(self.expression())
        self.expect_op(")")
        return tuple(args)


def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, Unary):
        return (node.operand,)
    if isinstance(node, Conditional):
        return (node.condition, node.when_true, node.when_false)
    if isinstance(node, Member):
        return (node.target,)
    if isinstance(node, MethodCall):
        return (node.target, *node.args)
    if isinstance(node, Call):
        return node.args
    return ()
